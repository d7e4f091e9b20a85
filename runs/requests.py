"""Requests a view cannot make sense of: a 400 page that names the parameter and says what is
wrong, never a 500.

Two things here: a middleware that refuses a NUL character in any parameter (Postgres cannot
store one, and no form of ours has a use for it), and BadParameter, which a view raises for a
value it cannot read (the middleware turns it into the same page).
"""

from django.shortcuts import render


class BadParameter(Exception):
    """A request parameter a view cannot use; the message names it."""


def bad_request(request, message):
    return render(request, "400.html", {"message": message}, status=400)


def whole_number(params, name):
    """The parameter as a whole number, None when absent or empty; BadParameter otherwise.
    (str.isdigit() accepts "²", which int() refuses.)"""
    text = params.get(name, "")
    if text == "":
        return None
    if not (text.isascii() and text.isdigit()):
        raise BadParameter(f"The parameter '{name}' must be a whole number, not {text[:40]!r}.")
    return int(text)


class RefuseCraftedInput:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        for params in (request.GET, request.POST) if request.method == "POST" else (request.GET,):
            for name, values in params.lists():
                if "\x00" in name or any("\x00" in value for value in values):
                    shown = name.replace("\x00", "\\u0000")
                    return bad_request(request, f"The parameter '{shown}' holds a NUL character (\\u0000), "
                                                "which nothing here accepts. Nothing was changed.")
        return self.get_response(request)

    def process_exception(self, request, exception):
        if isinstance(exception, BadParameter):
            return bad_request(request, str(exception))
        return None
