"""Teachers: score a student's rollout token by token (see base.py for the contract)."""
