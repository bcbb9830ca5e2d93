"""The one exception type that means "the user gave us something we cannot use" (a flag, a recipe value, a file).

The command line turns it into one line on stderr and exit code 2. It subclasses ``ValueError`` so that code (and
users' code) that already catches ``ValueError`` around a call keeps working. Raise it where an input is validated,
with a message that names the key, flag or file and says what to do; anything else that escapes the library
(``TypeError``, ``KeyError``, ...) is treated as a bug in the library, exit code 1.
"""

from __future__ import annotations


class UserInputError(ValueError):
    """Bad input (a flag, a recipe key's value, a file's contents), described in one line with the fix."""
