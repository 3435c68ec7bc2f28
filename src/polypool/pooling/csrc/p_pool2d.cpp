// The Python bindings of P-pooling's fused CPU kernels (declared in p_pool2d.h, defined in cpu/p_pool2d_kernel.cpp):
// the module that polypool/pooling/cpu_fused.py builds with torch.utils.cpp_extension.load.
#include <torch/extension.h>

#include "p_pool2d.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("forward", &polypool::ops::p_pool2d_forward, "P-pooling forward (CPU, fused)");
  module.def("backward", &polypool::ops::p_pool2d_backward, "P-pooling backward (CPU, fused)");
  module.def("dense_forward", &polypool::ops::dense_p_pool2d_forward,
             "P-pooling with the fused dense-alpha branch: forward (CPU)");
  module.def("dense_backward", &polypool::ops::dense_p_pool2d_backward,
             "P-pooling with the fused dense-alpha branch: backward (CPU)");
}
