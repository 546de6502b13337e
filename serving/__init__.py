"""metallmix's Ray Serve application (serving/app.py); the vLLM engine deployment is serving/engine.py."""
