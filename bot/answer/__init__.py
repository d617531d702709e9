"""How a knowledge answer is composed and checked: evidence sentences, extractive answers, support checks."""
