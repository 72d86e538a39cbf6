"""scGPT (bowang-lab): the published release folder (args.json, vocab.json, best_model.pt),
served per layer."""
