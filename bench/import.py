"""Importing 1,000,000 contacts: rows per second and peak memory of `reconciler contacts import`.

The file is generated (reconciler.samples: about 2% repeated addresses typed differently). The import runs as a
user runs it, in a fresh process, subscribing every row to a list. The baseline, measured in the same run, is
email-validator alone checking the same addresses: the part of an import no implementation can skip.
Targets: >= 20,000 rows/s and a peak RSS under 300 MB.
"""

from __future__ import annotations

import csv
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from email_validator import validate_email

from reconciler.samples import sample_csv

ROWS = 1_000_000
REPO = Path(__file__).resolve().parent.parent


def baseline(path: Path, limit: int = 200_000) -> float:
    """Addresses per second email-validator checks (on the first `limit` rows of the same file)."""
    with path.open(newline="") as handle:
        addresses = [row["email"].strip() for _, row in zip(range(limit), csv.DictReader(handle), strict=False)]
    started = time.perf_counter()
    for address in addresses:
        validate_email(address, check_deliverability=False)
    return len(addresses) / (time.perf_counter() - started)


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        for name in ("spec", "templates"):
            shutil.copytree(REPO / name, root / name)
        path = root / "contacts.csv"
        with path.open("w") as handle:
            for chunk in sample_csv(ROWS, seed=1):
                handle.write(chunk)
        started = time.perf_counter()
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "reconciler",
                "-C",
                str(root),
                "contacts",
                "import",
                str(path),
                "--list",
                "newsletter",
                "--preconfirmed",
                "--consent",
                "bench",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        elapsed = time.perf_counter() - started
        if result.returncode != 0:
            sys.exit(f"import failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        validator = baseline(path)
    rate = ROWS / elapsed
    print(f"import: {ROWS:,} rows ({result.stdout.strip()})")
    print(
        f"  reconciler contacts import: {elapsed:.1f} s = {rate:,.0f} rows/s "
        f"({'meets' if rate >= 20_000 else 'MISSES'} the 20,000 rows/s target)"
    )
    print(f"  peak RSS of the import process: {peak_mb:.0f} MB ({'meets' if peak_mb < 300 else 'MISSES'} < 300 MB)")
    print(f"  baseline: email-validator alone: {validator:,.0f} addresses/s")
    print(f"  ratio import rate / validator rate: {rate / validator:.2f}")


if __name__ == "__main__":
    main()
