"""The form room: a form's definition (fields, rules), parsing a submission into an
ExecutionRequest, and rendering it (text, HTML, JSON).

May import: the frame (errors, config) only.
"""
