from __future__ import annotations

from blueprints.console import auth, dead_letters, jobs, payouts
from blueprints.console.base import bp

# Importing the page modules registers their views on `bp`.
__all__ = ["auth", "bp", "dead_letters", "jobs", "payouts"]
