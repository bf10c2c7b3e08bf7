-- A value sealed with the master key when the database got its first secret: a process holding
-- another key (or none, about to make one up) is refused before it seals anything.
CREATE TABLE master_key_check (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    nonce BLOB NOT NULL,
    ciphertext BLOB NOT NULL
);
