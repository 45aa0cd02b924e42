"""Pure stream logic: importable and testable without a broker."""
