"""Language models: an OpenAI-compatible client (`client.py`: OpenRouter, Ollama,
llama.cpp, vLLM, …) and the offline writer (`offline.py`). Both return `models.Completion`
and fail with `errors.LLMError`."""
