"""Paper recipes of this app (YAML files shipped as package data)."""
