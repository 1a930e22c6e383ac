"""Giving a trained run to others: export (adapter or merged model, model card), `r1lite try`, the Hub."""
