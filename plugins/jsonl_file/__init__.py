"""A sink appending every committed sample, in the JSON form, to a JSON-lines file."""
