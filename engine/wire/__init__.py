"""The wire format both ends and their workers share: framing, the messages between the two
ends, the messages between a coordinator and its workers, endpoints. No sockets, no plugins.
"""
