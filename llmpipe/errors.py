"""The one exception type for mistakes a user can fix: the CLI prints its message, no traceback."""


class UserError(Exception):
    """Bad input (recipe, params, data, model folder): the message names the culprit and the fix."""
