"""Judges of answers: the probability judge, whose verdict is read from label probabilities
(probability.py, labelprobs.py, rubrics.py), and the generative judge with its strictly parsed [[N]]
score (generative.py)."""
