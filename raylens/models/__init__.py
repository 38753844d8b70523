"""Model families (OpenCLIP, faces), device choice and model ids; nothing of jobs or stores."""
