import sys, tempfile
from pathlib import Path
from reliability.callbacks import callbacks
from reliability.run import Size
from tests.processes import throwaway_postgres_database
with tempfile.TemporaryDirectory() as tmp, throwaway_postgres_database("postgresql://postgres@127.0.0.1:5432/postgres") as url:
    account = callbacks(url, Path(tmp), Size(30, deadline_seconds=40), down_seconds=10)
    print(account.table())
