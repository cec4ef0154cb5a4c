"""Evaluation on held-out toy objects: one test-set builder, the metrics, one evaluator per stage
and the paper's tables.

    test_set.py         the splits and the one recipe every evaluator draws its objects from
    metrics.py          IoU, Chamfer-L1, F-score, colour PSNR, retrieval
    image_metrics.py    FID and CLIP similarity on rendered views
    report.py           strict-JSON reports, target checks
    vae.py              stage 1: reconstruction (``evaluate ae``)
    embed.py            stages 2-3: retrieval with the towers, the prior's cosine (``evaluate embed|prior``)
    generate.py         image -> mesh with and without the prior (``evaluate generate``)
    paper.py            the paper's protocol and tables (``evaluate paper``); paper_ablations.py: its
                        autoencoder ablations
"""
