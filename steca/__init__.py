"""steca: everything that decides and learns — records and their files, the method's math (step
rewards, deviation rule, DTW distance, sample weights, losses), reflection, dataset builders,
training entry points and the generators of small games and tasks."""
