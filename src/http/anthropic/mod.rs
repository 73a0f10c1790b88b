//! The Anthropic Messages surface.
