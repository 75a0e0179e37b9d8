"""Content negotiation that always answers JSON."""

from rest_framework.negotiation import DefaultContentNegotiation


class AlwaysJSONNegotiation(DefaultContentNegotiation):
    """
    Choose parsers as DRF does, but always render with the first (only) renderer: JSON.

    Callers read every answer as JSON; a 406 for an odd Accept header would help nobody.
    """

    def select_renderer(self, request, renderers, format_suffix=None):
        return (renderers[0], renderers[0].media_type)
