"""What generated ALFWorld rooms are made of: receptacle kinds, object kinds, rooms and task types.

Names follow ALFRED's object classes (``CounterTop``, ``SinkBasin``...) because the engine shows
them lower-cased (``countertop 1``, ``sinkbasin 1``), exactly as in the official games. Every
object kind lists the receptacle kinds it may sit in, most likely first: the generator places
objects with it and the expert searches in that order.
"""
from __future__ import annotations

from dataclasses import dataclass

TASK_TYPES: tuple[str, ...] = (
    "pick_and_place_simple",
    "look_at_obj_in_light",
    "pick_clean_then_place_in_recep",
    "pick_heat_then_place_in_recep",
    "pick_cool_then_place_in_recep",
    "pick_two_obj_and_place",
)

# Task type -> the appliance receptacle kind it needs (None: no appliance).
APPLIANCE: dict[str, str | None] = {
    "pick_and_place_simple": None,
    "look_at_obj_in_light": None,
    "pick_clean_then_place_in_recep": "SinkBasin",
    "pick_heat_then_place_in_recep": "Microwave",
    "pick_cool_then_place_in_recep": "Fridge",
    "pick_two_obj_and_place": None,
}

# Task type -> the object property it needs (see ObjectKind).
NEEDS: dict[str, str | None] = {
    "pick_and_place_simple": None,
    "look_at_obj_in_light": "examinable",
    "pick_clean_then_place_in_recep": "cleanable",
    "pick_heat_then_place_in_recep": "heatable",
    "pick_cool_then_place_in_recep": "coolable",
    "pick_two_obj_and_place": None,
}

# Two phrasings per task type, as ALFWorld's goal templates have; {obj}/{recep} are lower-case kinds.
GOAL_TEMPLATES: dict[str, tuple[str, str]] = {
    "pick_and_place_simple": ("put a {obj} in {recep}", "put some {obj} on {recep}"),
    "look_at_obj_in_light": ("look at {obj} under the desklamp", "examine the {obj} with the desklamp"),
    "pick_clean_then_place_in_recep": ("put a clean {obj} in {recep}", "clean some {obj} and put it in {recep}"),
    "pick_heat_then_place_in_recep": ("put a hot {obj} in {recep}", "heat some {obj} and put it in {recep}"),
    "pick_cool_then_place_in_recep": ("put a cool {obj} in {recep}", "cool some {obj} and put it in {recep}"),
    "pick_two_obj_and_place": ("put two {obj} in {recep}", "find two {obj} and put them in {recep}"),
}

LAMP = "DeskLamp"


@dataclass(frozen=True)
class ReceptacleKind:
    """A receptacle class. ``pddl_base`` / ``pddl_suffix`` shape its PDDL id the ALFRED way
    (``Sink_bar_..._bar_SinkBasin`` is shown as ``sinkbasin``)."""

    name: str
    openable: bool = False
    pddl_base: str = ""
    pddl_suffix: str = ""

    @property
    def text(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class ObjectKind:
    """An object class and where it may be found (most likely receptacle kinds first)."""

    name: str
    places: tuple[str, ...]
    cleanable: bool = False
    heatable: bool = False
    coolable: bool = False
    toggleable: bool = False
    examinable: bool = False  # a sensible object for "look at X under the desklamp"

    @property
    def text(self) -> str:
        return self.name.lower()


RECEPTACLES: dict[str, ReceptacleKind] = {r.name: r for r in (
    ReceptacleKind("Cabinet", openable=True),
    ReceptacleKind("Drawer", openable=True),
    ReceptacleKind("Fridge", openable=True),
    ReceptacleKind("Microwave", openable=True),
    ReceptacleKind("Safe", openable=True),
    ReceptacleKind("CounterTop"),
    ReceptacleKind("DiningTable"),
    ReceptacleKind("SinkBasin", pddl_base="Sink", pddl_suffix="SinkBasin"),
    ReceptacleKind("BathtubBasin", pddl_base="Bathtub", pddl_suffix="BathtubBasin"),
    ReceptacleKind("StoveBurner"),
    ReceptacleKind("GarbageCan"),
    ReceptacleKind("Shelf"),
    ReceptacleKind("CoffeeMachine"),
    ReceptacleKind("Toaster"),
    ReceptacleKind("Bed"),
    ReceptacleKind("Desk"),
    ReceptacleKind("Dresser"),
    ReceptacleKind("SideTable"),
    ReceptacleKind("Sofa"),
    ReceptacleKind("ArmChair"),
    ReceptacleKind("CoffeeTable"),
    ReceptacleKind("TVStand"),
    ReceptacleKind("Ottoman"),
    ReceptacleKind("Toilet"),
    ReceptacleKind("TowelHolder"),
    ReceptacleKind("HandTowelHolder"),
    ReceptacleKind("ToiletPaperHanger"),
)}

OBJECTS: dict[str, ObjectKind] = {o.name: o for o in (
    # kitchen
    ObjectKind("Apple", ("CounterTop", "DiningTable", "Fridge", "GarbageCan", "SinkBasin", "Microwave"),
               cleanable=True, heatable=True, coolable=True),
    ObjectKind("Tomato", ("CounterTop", "DiningTable", "Fridge", "SinkBasin", "GarbageCan", "Microwave"),
               cleanable=True, heatable=True, coolable=True),
    ObjectKind("Potato", ("CounterTop", "DiningTable", "Fridge", "GarbageCan", "Microwave", "SinkBasin"),
               cleanable=True, heatable=True, coolable=True),
    ObjectKind("Egg", ("Fridge", "CounterTop", "DiningTable", "SinkBasin", "GarbageCan"),
               cleanable=True, heatable=True, coolable=True),
    ObjectKind("Lettuce", ("Fridge", "CounterTop", "DiningTable", "SinkBasin"), cleanable=True, coolable=True),
    ObjectKind("Bread", ("CounterTop", "DiningTable", "Fridge", "Cabinet"), heatable=True, coolable=True),
    ObjectKind("Mug", ("CoffeeMachine", "Cabinet", "CounterTop", "DiningTable", "SinkBasin", "Shelf", "Microwave",
                       "Fridge"), cleanable=True, heatable=True, coolable=True),
    ObjectKind("Cup", ("Cabinet", "CounterTop", "DiningTable", "SinkBasin", "Shelf", "Fridge", "Microwave"),
               cleanable=True, heatable=True, coolable=True),
    ObjectKind("Bowl", ("Cabinet", "CounterTop", "DiningTable", "Shelf", "Fridge", "SinkBasin", "Microwave"),
               cleanable=True, heatable=True, coolable=True, examinable=True),
    ObjectKind("Plate", ("Cabinet", "CounterTop", "DiningTable", "Shelf", "Fridge", "SinkBasin"),
               cleanable=True, heatable=True, coolable=True),
    ObjectKind("Pan", ("StoveBurner", "Cabinet", "CounterTop", "SinkBasin", "DiningTable"),
               cleanable=True, coolable=True),
    ObjectKind("Pot", ("StoveBurner", "Cabinet", "CounterTop", "SinkBasin", "DiningTable"),
               cleanable=True, coolable=True),
    ObjectKind("Knife", ("CounterTop", "DiningTable", "Drawer", "SinkBasin"), cleanable=True),
    ObjectKind("ButterKnife", ("Drawer", "CounterTop", "DiningTable", "SinkBasin"), cleanable=True),
    ObjectKind("Fork", ("Drawer", "CounterTop", "DiningTable", "SinkBasin"), cleanable=True),
    ObjectKind("Spoon", ("Drawer", "CounterTop", "DiningTable", "SinkBasin"), cleanable=True),
    ObjectKind("Spatula", ("Drawer", "CounterTop", "DiningTable", "SinkBasin"), cleanable=True),
    ObjectKind("Ladle", ("Drawer", "CounterTop", "DiningTable", "SinkBasin"), cleanable=True),
    ObjectKind("Kettle", ("StoveBurner", "CounterTop", "Cabinet", "SinkBasin"), cleanable=True),
    ObjectKind("SaltShaker", ("CounterTop", "Cabinet", "DiningTable", "Shelf", "Drawer")),
    ObjectKind("PepperShaker", ("CounterTop", "Cabinet", "DiningTable", "Shelf", "Drawer")),
    ObjectKind("WineBottle", ("Fridge", "CounterTop", "DiningTable", "Cabinet", "Shelf"), coolable=True),
    ObjectKind("DishSponge", ("SinkBasin", "CounterTop", "Cabinet", "Drawer", "BathtubBasin"), cleanable=True),
    ObjectKind("SoapBottle", ("CounterTop", "Cabinet", "Shelf", "Toilet", "SinkBasin", "GarbageCan")),
    # bathroom
    ObjectKind("SoapBar", ("SinkBasin", "CounterTop", "BathtubBasin", "Toilet", "Cabinet", "GarbageCan"),
               cleanable=True),
    ObjectKind("Cloth", ("Cabinet", "CounterTop", "BathtubBasin", "SinkBasin", "Toilet", "Drawer"), cleanable=True),
    ObjectKind("HandTowel", ("HandTowelHolder", "CounterTop", "Cabinet")),
    ObjectKind("Towel", ("TowelHolder", "BathtubBasin", "Cabinet", "CounterTop")),
    ObjectKind("ToiletPaper", ("ToiletPaperHanger", "Toilet", "Cabinet", "CounterTop", "GarbageCan")),
    ObjectKind("SprayBottle", ("Toilet", "Cabinet", "CounterTop", "GarbageCan", "Shelf")),
    ObjectKind("Candle", ("Toilet", "CounterTop", "Cabinet", "Shelf", "BathtubBasin"), examinable=True),
    ObjectKind("TissueBox", ("Toilet", "CounterTop", "Shelf", "SideTable", "CoffeeTable", "Dresser", "Cabinet")),
    # bedroom / living room
    ObjectKind("AlarmClock", ("Desk", "SideTable", "Dresser", "Shelf"), examinable=True),
    ObjectKind("Book", ("Desk", "Bed", "SideTable", "Shelf", "Dresser", "Drawer", "CoffeeTable", "Sofa"),
               examinable=True),
    ObjectKind("CD", ("Desk", "Drawer", "Shelf", "SideTable", "Dresser", "Safe", "GarbageCan"), examinable=True),
    ObjectKind("CellPhone", ("Desk", "Bed", "SideTable", "Dresser", "Drawer", "Sofa", "ArmChair"), examinable=True),
    ObjectKind("CreditCard", ("Desk", "Drawer", "SideTable", "Dresser", "Shelf", "Safe", "CoffeeTable", "ArmChair"),
               examinable=True),
    ObjectKind("KeyChain", ("Desk", "Drawer", "SideTable", "Dresser", "Shelf", "Safe", "CoffeeTable", "Sofa"),
               examinable=True),
    ObjectKind("Pen", ("Desk", "Drawer", "SideTable", "Shelf", "Dresser", "GarbageCan")),
    ObjectKind("Pencil", ("Desk", "Drawer", "SideTable", "Shelf", "Dresser", "GarbageCan"), examinable=True),
    ObjectKind("Pillow", ("Bed", "Sofa", "ArmChair", "Ottoman"), examinable=True),
    ObjectKind("Laptop", ("Desk", "Bed", "Sofa", "CoffeeTable", "SideTable", "Dresser", "ArmChair"), examinable=True),
    ObjectKind("Watch", ("Desk", "SideTable", "Dresser", "Drawer", "Shelf", "Safe", "CoffeeTable"), examinable=True),
    ObjectKind("RemoteControl", ("CoffeeTable", "Sofa", "ArmChair", "TVStand", "SideTable", "Dresser", "Ottoman"),
               examinable=True),
    ObjectKind("Newspaper", ("CoffeeTable", "Sofa", "ArmChair", "SideTable", "Ottoman", "GarbageCan"),
               examinable=True),
    ObjectKind("Statue", ("Shelf", "SideTable", "CoffeeTable", "Dresser", "TVStand", "DiningTable"), examinable=True),
    ObjectKind("Vase", ("Shelf", "SideTable", "CoffeeTable", "Dresser", "DiningTable", "TVStand"), examinable=True),
    ObjectKind("Box", ("Shelf", "Dresser", "CoffeeTable", "Sofa", "SideTable", "ArmChair", "Ottoman"),
               examinable=True),
    ObjectKind(LAMP, ("SideTable", "Desk", "Dresser"), toggleable=True),
)}


@dataclass(frozen=True)
class RoomType:
    """A kind of room: which receptacles it always has, which it may have, which objects live there.

    ``required``/``optional`` map a receptacle kind to its (min, max) count.
    """

    name: str
    required: dict[str, tuple[int, int]]
    optional: dict[str, tuple[int, int]]
    objects: tuple[str, ...]
    tasks: tuple[str, ...]
    has_lamp: bool = False


ROOMS: dict[str, RoomType] = {r.name: r for r in (
    RoomType(
        "kitchen",
        required={"Cabinet": (1, 4), "CounterTop": (1, 2), "Fridge": (1, 1), "Microwave": (1, 1),
                  "SinkBasin": (1, 1)},
        optional={"Drawer": (1, 3), "DiningTable": (1, 1), "StoveBurner": (1, 2), "GarbageCan": (1, 1),
                  "Shelf": (1, 2), "CoffeeMachine": (1, 1), "Toaster": (1, 1)},
        objects=("Apple", "Tomato", "Potato", "Egg", "Lettuce", "Bread", "Mug", "Cup", "Bowl", "Plate", "Pan", "Pot",
                 "Knife", "ButterKnife", "Fork", "Spoon", "Spatula", "Ladle", "Kettle", "SaltShaker", "PepperShaker",
                 "WineBottle", "DishSponge", "SoapBottle"),
        tasks=("pick_and_place_simple", "pick_clean_then_place_in_recep", "pick_heat_then_place_in_recep",
               "pick_cool_then_place_in_recep", "pick_two_obj_and_place"),
    ),
    RoomType(
        "bathroom",
        required={"SinkBasin": (1, 2), "CounterTop": (1, 1), "Toilet": (1, 1)},
        optional={"Cabinet": (1, 4), "Drawer": (1, 2), "BathtubBasin": (1, 1), "GarbageCan": (1, 1),
                  "TowelHolder": (1, 1), "HandTowelHolder": (1, 1), "ToiletPaperHanger": (1, 1), "Shelf": (1, 2)},
        objects=("SoapBar", "Cloth", "HandTowel", "Towel", "ToiletPaper", "SprayBottle", "Candle", "TissueBox",
                 "SoapBottle", "DishSponge"),
        tasks=("pick_and_place_simple", "pick_clean_then_place_in_recep", "pick_two_obj_and_place"),
    ),
    RoomType(
        "bedroom",
        required={"Bed": (1, 1), "Desk": (1, 1), "SideTable": (1, 2)},
        optional={"Drawer": (1, 4), "Dresser": (1, 1), "Shelf": (1, 3), "GarbageCan": (1, 1), "Safe": (1, 1),
                  "ArmChair": (1, 1)},
        objects=("AlarmClock", "Book", "CD", "CellPhone", "CreditCard", "KeyChain", "Pen", "Pencil", "Pillow",
                 "Laptop", "Watch", "TissueBox", "Box", "Vase"),
        tasks=("pick_and_place_simple", "look_at_obj_in_light", "pick_two_obj_and_place"),
        has_lamp=True,
    ),
    RoomType(
        "livingroom",
        required={"Sofa": (1, 1), "CoffeeTable": (1, 1), "SideTable": (1, 2)},
        optional={"ArmChair": (1, 2), "TVStand": (1, 1), "Shelf": (1, 3), "Drawer": (1, 3), "Dresser": (1, 1),
                  "GarbageCan": (1, 1), "Ottoman": (1, 1), "DiningTable": (1, 1), "Cabinet": (1, 2)},
        objects=("RemoteControl", "Newspaper", "KeyChain", "CreditCard", "Statue", "Vase", "Box", "Laptop", "Pillow",
                 "Watch", "TissueBox", "Book", "CellPhone"),
        tasks=("pick_and_place_simple", "look_at_obj_in_light", "pick_two_obj_and_place"),
        has_lamp=True,
    ),
)}

# Goal receptacles that make no sense for a task (the appliance itself, or where the object is used).
GOAL_EXCLUDED: dict[str, frozenset[str]] = {
    "pick_clean_then_place_in_recep": frozenset({"SinkBasin", "BathtubBasin"}),
    "pick_heat_then_place_in_recep": frozenset({"Microwave"}),
    "pick_cool_then_place_in_recep": frozenset({"Fridge"}),
}


@dataclass(frozen=True)
class Size:
    """How big a generated room is: receptacle and distractor-object counts (inclusive ranges)."""

    receptacles: tuple[int, int]
    distractors: tuple[int, int]


SIZES: dict[str, Size] = {
    "tiny": Size(receptacles=(4, 7), distractors=(1, 4)),  # the CPU demo: short searches, short observations
    "small": Size(receptacles=(6, 12), distractors=(4, 10)),
    "medium": Size(receptacles=(10, 16), distractors=(8, 16)),
    "large": Size(receptacles=(14, 22), distractors=(12, 24)),
}
