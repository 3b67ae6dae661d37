"""Default policy files shipped with Gristmill (YAML) and their JSON Schemas."""
