"""The DD-SAM2 paper recipes (YAML); a package so that a wheel ships them (setup.py package_data)."""
