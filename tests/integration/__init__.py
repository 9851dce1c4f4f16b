"""Tests of the whole stack rather than one module: several processes (DDP, DeepSpeed), real model and
configuration shapes, a fresh install, and the GPU check's CPU dry run. Most are marked `slow`."""
