"""The PostgreSQL engine: the production store (asyncpg under Trio, one writer, a read pool, COPY group commit)."""
