"""The files both ends and their workers share: image locations, the destination's journal,
the digest, device-state files, and which paths a transfer will write.
"""
