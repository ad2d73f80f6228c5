from __future__ import annotations

API_KEY = "sk_test_elevaPayoutsLocal4242"


ACCOUNT = "acct_1ExpertLocal"
