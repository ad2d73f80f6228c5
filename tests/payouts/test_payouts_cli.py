from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import Result
from flask import Flask
from flask.testing import FlaskCliRunner
from sqlalchemy import select

from service.extensions import get_sessions
from service.payouts.models import Expert, PaymentTransfer
from tests.helpers import add_expert, add_transfer, load_transfer, row_count

EXPERTS_CSV = """id,email,first_name,country,stripe_account_id,payouts_enabled
exp_ana,ana@example.com,Ana,PT,acct_1Ana,true
exp_emily,emily@example.com,Emily,us,acct_1Emily,yes
exp_new,new@example.com,Noor,,,
"""
HEADER = ("expert_id,payment_id,charge_id,price,currency,session_start_at,session_end_at,"
          "paid_at,requires_approval\n")
TRANSFERS_CSV = HEADER + """\
exp_ana,pi_a1,ch_a1,10000,eur,2025-02-21T09:00:00Z,2025-02-21T10:00:00Z,2025-02-20T17:30:00Z,
exp_emily,pi_e1,,9900,USD,2025-02-21T09:00:00Z,2025-02-21T10:00:00Z,2025-02-20T17:30:00Z,false
exp_ana,pi_a2,,12000,eur,2025-02-22T09:00:00Z,2025-02-22T10:00:00Z,2025-02-20T17:30:00Z,true
"""


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_import_csv_all_rows(app: Flask, runner: FlaskCliRunner, tmp_path: Path) -> None:
    experts = runner.invoke(args=["payouts", "import", "--kind", "experts",
                                  write(tmp_path, "experts.csv", EXPERTS_CSV)])
    assert experts.exit_code == 0, experts.output
    assert "imported 3 new expert(s)" in experts.output
    with get_sessions(app)() as session:
        emily = session.get_one(Expert, "exp_emily")
        assert (emily.country, emily.payouts_enabled) == ("US", True)
        assert session.get_one(Expert, "exp_new").stripe_account_id is None

    path = write(tmp_path, "transfers.csv", TRANSFERS_CSV)
    result = runner.invoke(args=["payouts", "import", path])
    assert result.exit_code == 0, result.output
    assert "imported 3 new transfer(s); 0 already registered" in result.output
    with get_sessions(app)() as session:
        rows = {r.payment_id: r for r in session.scalars(select(PaymentTransfer))}
    assert (rows["pi_a1"].amount, rows["pi_a1"].platform_fee, rows["pi_a1"].charge_id) == (
        8500, 1500, "ch_a1")
    assert rows["pi_e1"].currency == "usd"
    assert rows["pi_a2"].requires_approval is True
    # PT: seven days after payment; US: two days after payment, but a day after the session.
    assert rows["pi_a1"].scheduled_transfer_at.isoformat() == "2025-02-27T17:30:00+00:00"
    assert rows["pi_e1"].scheduled_transfer_at.isoformat() == "2025-02-22T17:30:00+00:00"

    again = runner.invoke(args=["payouts", "import", path])
    assert "imported 0 new transfer(s); 3 already registered" in again.output
    assert row_count(app, PaymentTransfer) == 3


def test_import_refuses_the_whole_file_listing_every_problem(
    app: Flask, runner: FlaskCliRunner, tmp_path: Path
) -> None:
    add_expert(app, "exp_ana")
    registered = add_transfer(app, expert_id="exp_ana", payment_id="pi_taken")
    lines = [
        {"expert_id": "exp_ana", "payment_id": "pi_ok1", "price": 5000, "currency": "eur",
         "session_start_at": "2025-02-21T09:00:00Z", "session_end_at": "2025-02-21T10:00:00Z",
         "paid_at": "2025-02-20T17:30:00Z"},
        "not json at all",
        [1, 2, 3],
        {"expert_id": "nobody", "payment_id": "pi_ok2", "price": 5000, "currency": "eur",
         "session_start_at": "2025-02-21T09:00:00Z", "session_end_at": "2025-02-21T10:00:00Z",
         "paid_at": "2025-02-20T17:30:00Z"},
        {"expert_id": "exp_ana", "payment_id": "pi_ok1", "price": 5000, "currency": "eur",
         "session_start_at": "2025-02-21T09:00:00Z", "session_end_at": "2025-02-21T10:00:00Z",
         "paid_at": "2025-02-20T17:30:00Z"},
        {"expert_id": "exp_ana", "payment_id": "pi_taken", "price": 7777, "currency": "eur",
         "session_start_at": "2025-02-21T09:00:00Z", "session_end_at": "2025-02-21T10:00:00Z",
         "paid_at": "2025-02-20T17:30:00Z"},
        {"expert_id": "exp_ana", "payment_id": "pi_bad", "price": 12.5, "currency": "eu"},
    ]
    text = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines)
    result = runner.invoke(args=["payouts", "import", write(tmp_path, "t.jsonl", text + "\n")])

    assert result.exit_code == 1
    output = result.output
    assert "problem(s) in t.jsonl; nothing was imported" in output
    for expected in ("line 2: line: not valid JSON", "line 3: line: not a JSON object",
                     "line 4: expert_id: no such expert",
                     "line 5: payment_id: repeats the payment of line 1",
                     f"line 6: payment_id: already registered as transfer {registered} with "
                     "different price",
                     "line 7: price:", "line 7: currency:", "line 7: session_start_at: required",
                     "line 7: paid_at: required"):
        assert expected in output, expected
    assert row_count(app, PaymentTransfer) == 1
    assert load_transfer(app, registered).amount == 8500


def test_import_needs_a_known_format(runner: FlaskCliRunner, tmp_path: Path) -> None:
    result = runner.invoke(args=["payouts", "import", write(tmp_path, "t.txt", "x")])
    assert result.exit_code == 1
    assert "--format" in result.output
    csv_rows = runner.invoke(args=["payouts", "import", "--format", "csv",
                                   write(tmp_path, "t2.txt", "expert_id,bogus\nexp,1,2\n")])
    assert "line 2: line: more values than columns" in csv_rows.output


def test_approve_and_summary(app: Flask, runner: FlaskCliRunner) -> None:
    add_expert(app)
    held = add_transfer(app, requires_approval=True)
    result = runner.invoke(args=["payouts", "approve", str(held), "--by", "ops@example.com"])
    assert result.exit_code == 0, result.output
    assert load_transfer(app, held).approved_by == "ops@example.com"
    missing = runner.invoke(args=["payouts", "approve", "999", "--by", "ops"])
    assert missing.exit_code == 1 and "transfer_not_found" in missing.output
    summary = runner.invoke(args=["payouts", "summary"])
    assert "PENDING=1" in summary.output and "COMPLETED=0" in summary.output


def failed_cleanly(result: Result) -> str:
    """Return the output of a command that failed with a click error, not a traceback."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    return result.output


def test_import_refuses_dates_and_numbers_it_cannot_store(
    app: Flask, runner: FlaskCliRunner, tmp_path: Path
) -> None:
    add_expert(app, "exp_ana")
    text = HEADER + """\
exp_ana,pi_1,,10000,eur,9999-12-31T10:00:00Z,9999-12-31T11:00:00Z,2025-02-20T17:30:00Z,
exp_ana,pi_2,,10000,eur,2025-02-21T09:00:00Z,2025-02-21T10:00:00Z,0001-01-01T00:00:00+01:00,
exp_ana,pi_3,,\u00b2,eur,2025-02-21T09:00:00Z,2025-02-21T10:00:00Z,2025-02-20T17:30:00Z,
exp_ana,pi_4,,10000,eur,2025-02-21T09:00:00Z,2025-02-21T10:00:00Z,2025-02-20T17:30:00Z,
"""
    output = failed_cleanly(runner.invoke(args=["payouts", "import",
                                                write(tmp_path, "t.csv", text)]))
    for expected in ("line 2: session_start_at: must be from", "line 2: session_end_at:",
                     "line 3: paid_at: must be from", "line 4: price: must be a whole number",
                     "4 problem(s) in t.csv; nothing was imported"):
        assert expected in output, expected
    assert row_count(app, PaymentTransfer) == 0


def test_import_refuses_text_that_cannot_be_stored(
    app: Flask, runner: FlaskCliRunner, tmp_path: Path
) -> None:
    rows = [{"id": "e1", "email": "\ud800@b.co", "first_name": "A"},
            {"id": "e2", "email": "a\u0000b@b.co", "first_name": "A"},
            {"id": "e3", "email": "c@b.co", "first_name": "A\u001b[2J"},
            {"id": "e5", "email": "e@b.co", "first_name": "E"}]
    path = write(tmp_path, "e.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
    output = failed_cleanly(runner.invoke(args=["payouts", "import", "--kind", "experts",
                                                path]))
    for expected in ("line 1: email:", "line 2: email:", "line 3: first_name:",
                     "3 problem(s) in e.jsonl"):
        assert expected in output, expected
    assert row_count(app, Expert) == 0


def test_import_reports_an_unreadable_file_in_one_line(
    app: Flask, runner: FlaskCliRunner, tmp_path: Path
) -> None:
    add_expert(app, "exp_ana")
    text = HEADER + "exp_ana," + "x" * 200_000 + "\n"  # a field over the csv module's limit
    output = failed_cleanly(runner.invoke(args=["payouts", "import",
                                                write(tmp_path, "t.csv", text)]))
    assert "Error: t.csv: cannot read the first record (field larger than field limit" in output
    assert "nothing was imported" in output
    assert row_count(app, PaymentTransfer) == 0


def test_import_lists_json_lines_it_cannot_parse(
    app: Flask, runner: FlaskCliRunner, tmp_path: Path
) -> None:
    add_expert(app, "exp_ana")
    text = ('{"price": 1}\n' + "[" * 100_000 + "]" * 100_000 + "\n"
            + '{"price": ' + "9" * 5000 + "}\n")
    output = failed_cleanly(runner.invoke(args=["payouts", "import",
                                                write(tmp_path, "t.jsonl", text)]))
    assert "line 2: line: JSON nested too deeply" in output
    assert "line 3: line: a JSON number too long" in output
    assert "problem(s) in t.jsonl; nothing was imported" in output
    assert row_count(app, PaymentTransfer) == 0


@pytest.mark.parametrize(("args", "expected"), [
    (["99999999999999999999", "--by", "ops"], "transfer_not_found"),
    (["2147483648", "--by", "ops"], "transfer_not_found"),
    (["{held}", "--by", "ops\u0000"], "approved_by: required"),
    (["{held}", "--by", "\ud800x"], "approved_by: required"),
    (["{held}", "--by", "  "], "approved_by: required"),
    (["{held}", "--by", "x" * 129], "approved_by: required"),
])
def test_approve_refuses_bad_input_in_one_line(
    app: Flask, runner: FlaskCliRunner, args: list[str], expected: str
) -> None:
    add_expert(app)
    held = add_transfer(app, requires_approval=True)
    args = [arg.format(held=held) for arg in args]
    output = failed_cleanly(runner.invoke(args=["payouts", "approve", *args]))
    assert "Error: " in output and expected in output
    assert load_transfer(app, held).approved_at is None
