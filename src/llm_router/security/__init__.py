"""Keys managed in the fleet's Redis, and per-key rate limits shared by every replica."""
