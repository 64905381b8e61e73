"""fusar-serve: FUSAR-GPT (or any image-text-to-text checkpoint) behind the OpenAI chat-completions API, requests
batched on one model, each image's AlphaEarth anchors given by the client or found by the server."""
