"""The one error every refusal raises, from the core up to the USB link."""


class FiscalError(Exception):
    """A refusal with a code and a sentence a shop owner can act on.

    `code` is the authority's (RCPT0xx, DEV0x, FISC0x, eTIMS 9xx) or the box's own (BOX_...).
    `field` names the input that caused it, when there is one.
    """

    def __init__(self, code, message, field=None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field

    def __str__(self):
        where = (" (" + self.field + ")") if self.field else ""
        return self.code + ": " + self.message + where

    def as_dict(self):
        return {"code": self.code, "message": self.message, "field": self.field}
