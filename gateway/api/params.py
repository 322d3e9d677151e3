"""Parameter types the routes share.

Row ids (alerts, commands, audit entries) are positive and at most a 64-bit signed integer: that is all
SQLite can bind (Python's sqlite3 raises OverflowError on anything larger, a 500) and more than PostgreSQL's
id columns hold. A larger or non-positive id is refused with 422 before storage is asked.
"""

from typing import Annotated

from fastapi import Path, Query

MAX_ROW_ID = 2**63 - 1

RowId = Annotated[int, Path(ge=1, le=MAX_ROW_ID)]
PageBefore = Annotated[int | None, Query(ge=1, le=MAX_ROW_ID, description="page: smallest id of the previous page")]
