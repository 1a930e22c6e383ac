"""Recipes: the typed, validated config (`config`) and how YAML recipes, profiles and overrides become one (`load`)."""
