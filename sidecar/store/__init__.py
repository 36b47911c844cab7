"""The spans table in PostgreSQL: the pool, the table's columns and rows,
migrations, day partitions and retention."""
