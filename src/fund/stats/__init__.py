"""Platform statistics, cached and rebuilt one at a time."""
