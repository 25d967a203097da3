"""Retrieval metrics, the FAISS gallery index and search helpers."""
