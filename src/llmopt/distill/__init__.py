"""Knowledge distillation: losses, online and cached teachers, the distillation objective."""
