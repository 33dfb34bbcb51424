"""Short instructions of mixed lengths that engine tests generate for."""

from __future__ import annotations

INSTRUCTIONS = (
    "Hi",
    "Write a short poem about the sea and the sky at night.",
    "What is 2+2?",
    "List three fruits that are red.",
    "Explain gravity to a child in simple words, please.",
    "Translate 'good morning' to French.",
    "Who wrote Hamlet?",
    "Give me a recipe for pancakes.",
    "Why is the sky blue?",
    "Summarize the plot of Cinderella in two sentences.",
    "Name a prime number.",
    "How do airplanes fly?",
)
