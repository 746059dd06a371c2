//! A fake OpenAI-compatible upstream: a real HTTP server inside the test
//! process (to be completed with the chat work).
