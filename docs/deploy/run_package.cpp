// Runs an AOTInductor package of a vimd model from C++ (no Python): loads the vimd ops library,
// then the package, feeds it one float32 input read from a raw file and writes the first output
// the same way.
//
//   run_package LIBVIMD_OPS PACKAGE.pt2 INPUT.f32 B,C,H,W OUTPUT.f32
//
// Build (see docs/deploy.md): g++ -std=c++17 run_package.cpp -I$TORCH/include
//   -I$TORCH/include/torch/csrc/api/include -L$TORCH/lib -Wl,-rpath,$TORCH/lib -ltorch -ltorch_cpu
//   -lc10 -ldl -o run_package      (TORCH: the installed torch package's folder)
#include <dlfcn.h>

#include <ATen/ATen.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

namespace {

std::vector<int64_t> parse_shape(const std::string& text) {
  std::vector<int64_t> shape;
  std::stringstream in(text);
  for (std::string item; std::getline(in, item, ',');) shape.push_back(std::stoll(item));
  return shape;
}

at::Tensor read_f32(const std::string& path, const std::vector<int64_t>& shape) {
  at::Tensor t = at::empty(shape, at::kFloat);
  std::ifstream f(path, std::ios::binary);
  f.read(reinterpret_cast<char*>(t.data_ptr<float>()), t.numel() * sizeof(float));
  if (!f) throw std::runtime_error("cannot read " + std::to_string(t.numel()) + " floats from " + path);
  return t;
}

void write_f32(const std::string& path, const at::Tensor& t) {
  const at::Tensor c = t.to(at::kFloat).contiguous();
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(c.data_ptr<float>()), c.numel() * sizeof(float));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 6) {
    std::cerr << "usage: " << argv[0] << " LIBVIMD_OPS PACKAGE.pt2 INPUT.f32 B,C,H,W OUTPUT.f32\n";
    return 2;
  }
  // The package calls vimd's ops (torch.ops.vimd.*_cpu / *_cuda): register them first.
  if (dlopen(argv[1], RTLD_NOW | RTLD_GLOBAL) == nullptr) {
    std::cerr << "cannot load " << argv[1] << ": " << dlerror() << "\n";
    return 1;
  }
  try {
    torch::inductor::AOTIModelPackageLoader loader(argv[2]);
    const std::vector<at::Tensor> outputs = loader.run({read_f32(argv[3], parse_shape(argv[4]))});
    write_f32(argv[5], outputs.at(0));
    std::cout << "output " << outputs.at(0).sizes() << "\n";
  } catch (const std::exception& e) {
    std::cerr << e.what() << "\n";
    return 1;
  }
  return 0;
}
