"""Raw text: naming sources (sources), reading documents (readers), sampling a mix by bytes (sampling)."""
