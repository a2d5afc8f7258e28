/// @file tile_kernels.hpp
/// @brief Register-tiled small matrix products and packet transposes over Eigen's SIMD packets,
/// the building blocks of detail::DecoderKernel.
///
/// Every output entry is produced by one fixed sequence of fused multiply-adds over the depth index
/// in increasing order, whatever the tile it sits in: the result of a product never depends on how
/// a caller splits the work, which keeps the Monte Carlo driver bit-reproducible.
#pragma once

#include <Eigen/Core>

namespace maskpos::detail {

/// The SIMD packet of Scalar that Eigen uses in this build (a scalar when there is no SIMD).
template <class Scalar>
using PacketOf = typename Eigen::internal::packet_traits<Scalar>::type;

template <class Scalar>
constexpr int packet_size() {
  return Eigen::internal::packet_traits<Scalar>::size;
}

/// Rounds n up to a multiple of m.
inline Eigen::Index round_up(Eigen::Index n, Eigen::Index m) { return (n + m - 1) / m * m; }

/// out[r][c P .. c P + P) (+)= sum_{k < depth} a[r a_stride + k] * b[k b_stride + c P .. + P),
/// for r < Rows, c < Packets: a Rows x (Packets P) tile of A B with A row-major (broadcast) and B
/// row-major (loaded as packets). With Accumulate the tile starts from the values in `out`.
template <class Scalar, int Rows, int Packets, bool Accumulate>
inline void tile_product(const Scalar* a, Eigen::Index a_stride, const Scalar* b, Eigen::Index b_stride,
                         Eigen::Index depth, Scalar* out, Eigen::Index out_stride) {
  using namespace Eigen::internal;
  using Packet = PacketOf<Scalar>;
  constexpr int P = packet_size<Scalar>();
  Packet acc[Rows][Packets];
  for (int r = 0; r < Rows; ++r)
    for (int c = 0; c < Packets; ++c)
      acc[r][c] = Accumulate ? ploadu<Packet>(out + r * out_stride + c * P) : pset1<Packet>(Scalar(0));
  for (Eigen::Index k = 0; k < depth; ++k) {
    Packet bk[Packets];
    for (int c = 0; c < Packets; ++c) bk[c] = ploadu<Packet>(b + k * b_stride + c * P);
    for (int r = 0; r < Rows; ++r) {
      const Packet ar = pset1<Packet>(a[r * a_stride + k]);
      for (int c = 0; c < Packets; ++c) acc[r][c] = pmadd(ar, bk[c], acc[r][c]);
    }
  }
  for (int r = 0; r < Rows; ++r)
    for (int c = 0; c < Packets; ++c) pstoreu(out + r * out_stride + c * P, acc[r][c]);
}

/// Rows x [first_packet, end_packet) tile strip: splits the packets into tiles of at most 3 (4 x 3
/// packets use 12 accumulators + 3 loads + 1 broadcast: the 16 vector registers of AVX2).
template <class Scalar, int Rows, bool Accumulate>
inline void strip_product(const Scalar* a, Eigen::Index a_stride, const Scalar* b, Eigen::Index b_stride,
                          Eigen::Index depth, Scalar* out, Eigen::Index out_stride, Eigen::Index first_packet,
                          Eigen::Index end_packet) {
  constexpr int P = packet_size<Scalar>();
  Eigen::Index c = first_packet;
  for (; end_packet - c >= 3; c += 3)
    tile_product<Scalar, Rows, 3, Accumulate>(a, a_stride, b + c * P, b_stride, depth, out + c * P, out_stride);
  if (end_packet - c == 2)
    tile_product<Scalar, Rows, 2, Accumulate>(a, a_stride, b + c * P, b_stride, depth, out + c * P, out_stride);
  else if (end_packet - c == 1)
    tile_product<Scalar, Rows, 1, Accumulate>(a, a_stride, b + c * P, b_stride, depth, out + c * P, out_stride);
}

/// to[k to_stride + j] = from[j from_stride + k] for j < rows, k < cols; rows and cols multiples of
/// the packet size (in-register packet transposes).
template <class Scalar>
inline void transpose_packets(const Scalar* from, Eigen::Index from_stride, Eigen::Index rows, Eigen::Index cols,
                              Scalar* to, Eigen::Index to_stride) {
  using namespace Eigen::internal;
  using Packet = PacketOf<Scalar>;
  constexpr int P = packet_size<Scalar>();
  if constexpr (P == 1) {
    for (Eigen::Index j = 0; j < rows; ++j)
      for (Eigen::Index k = 0; k < cols; ++k) to[k * to_stride + j] = from[j * from_stride + k];
  } else {
    // PacketBlock<__m256, 8> makes GCC warn that the vector type's alignment attribute is ignored
    // as a template argument; Eigen itself does this in every product kernel.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wignored-attributes"
#endif
    for (Eigen::Index j = 0; j < rows; j += P)
      for (Eigen::Index k = 0; k < cols; k += P) {
        PacketBlock<Packet, P> block;
        for (int t = 0; t < P; ++t) block.packet[t] = ploadu<Packet>(from + (j + t) * from_stride + k);
        ptranspose(block);
        for (int t = 0; t < P; ++t) pstoreu(to + (k + t) * to_stride + j, block.packet[t]);
      }
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
  }
}

}  // namespace maskpos::detail
