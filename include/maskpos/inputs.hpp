/// @file inputs.hpp
/// @brief The paper's input sequences (NOTES Sec. 3): alpha-correlated Gaussian tokens, orthonormal
/// tokens, and user-supplied token matrices.
#pragma once

#include <Eigen/Core>
#include <Eigen/QR>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "detail/errors.hpp"
#include "detail/tile_kernels.hpp"
#include "random.hpp"
#include "types.hpp"

namespace maskpos {

namespace detail {

/// The sum of x[k]^2 for k < n, floats read as Scalar. For float, in packets: the last packet reads up
/// to P - 1 floats past x + n (the caller's buffer must hold them; they are masked out).
template <class Scalar>
Scalar squared_norm(const float* x, Index n) {
  if constexpr (std::is_same_v<Scalar, float> && packet_size<float>() > 1) {
    using namespace Eigen::internal;
    using Packet = PacketOf<float>;
    constexpr Index P = packet_size<float>();
    Packet sum = pset1<Packet>(0.0f);
    Index k = 0;
    for (; n - k >= P; k += P) {
      const Packet v = ploadu<Packet>(x + k);
      sum = pmadd(v, v, sum);
    }
    if (k < n) {
      const Packet v = pand(ploadu<Packet>(x + k), pcmp_lt(plset<Packet>(0.0f), pset1<Packet>(static_cast<float>(n - k))));
      sum = pmadd(v, v, sum);
    }
    return predux(sum);
  } else {
    Scalar sum = 0;
    for (Index k = 0; k < n; ++k) sum += static_cast<Scalar>(x[k]) * static_cast<Scalar>(x[k]);
    return sum;
  }
}

/// values[k] = 1 / sqrt(values[k]) for k < n, correctly rounded (the same bits as the scalar
/// expression), a packet at a time for float with AVX: the rows' scale factors at once, instead of a
/// square root and a division in each row's dependency chain.
template <class Scalar>
void invert_square_roots(Scalar* values, Index n) {
  Index k = 0;
#if defined(__AVX__)
  if constexpr (std::is_same_v<Scalar, float>)
    for (; n - k >= 8; k += 8)
      _mm256_storeu_ps(values + k, _mm256_div_ps(_mm256_set1_ps(1.0f), _mm256_sqrt_ps(_mm256_loadu_ps(values + k))));
#endif
  for (; k < n; ++k) values[k] = Scalar(1) / std::sqrt(values[k]);
}

}  // namespace detail

/// Where the tokens of each sequence come from.
enum class InputKind {
  Gaussian,     ///< x_i = normalize(z_i + lambda c), lambda = sqrt(alpha / (1 - alpha)) (paper Sec. 3)
  Orthonormal,  ///< S orthonormal tokens in a uniformly random frame (requires d >= S)
  User          ///< one fixed S x d matrix supplied by the user (every sample is the same)
};

inline std::string to_string(InputKind kind) {
  switch (kind) {
    case InputKind::Gaussian: return "gaussian";
    case InputKind::Orthonormal: return "orthonormal";
    case InputKind::User: return "user";
  }
  return "?";
}

/// Describes the input sequences: their length S, width d and distribution.
struct InputSpec {
  InputKind kind = InputKind::Gaussian;
  Index seq_len = 50;  ///< S
  Index dim = 64;      ///< d
  double alpha = 0.0;  ///< cosine between distinct Gaussian tokens as d grows; alpha in [0, 1]
  Matrix<double> tokens;  ///< the S x d tokens for InputKind::User

  static InputSpec gaussian(Index S, Index d, double alpha) { return {InputKind::Gaussian, S, d, alpha, {}}; }
  static InputSpec orthonormal(Index S, Index d) { return {InputKind::Orthonormal, S, d, 0.0, {}}; }
  static InputSpec user(Matrix<double> tokens) {
    const Index S = tokens.rows(), d = tokens.cols();
    return {InputKind::User, S, d, 0.0, std::move(tokens)};
  }

  /// Throws std::invalid_argument naming the first parameter out of range.
  /// \pre S >= 1, d >= 1, 0 <= alpha <= 1; Orthonormal: d >= S; User: S x d tokens, finite entries
  /// (the first non-finite one is reported, row by row, as everywhere in maskpos).
  void validate() const {
    detail::require(seq_len >= 1, "seq_len S", seq_len, "S >= 1");
    detail::require(dim >= 1, "dim d", dim, "d >= 1");
    detail::require(alpha >= 0.0 && alpha <= 1.0, "alpha", alpha, "0 <= alpha <= 1");
    if (kind == InputKind::Orthonormal)
      detail::require(dim >= seq_len, "dim d", dim, "d >= S = " + detail::to_text(seq_len) + " for orthonormal inputs");
    if (kind == InputKind::User) {
      detail::require(tokens.rows() == seq_len && tokens.cols() == dim, "tokens shape",
                      std::to_string(tokens.rows()) + " x " + std::to_string(tokens.cols()),
                      "seq_len x dim = " + std::to_string(seq_len) + " x " + std::to_string(dim) + " for user inputs");
      for (Index i = 0; i < tokens.rows(); ++i)
        for (Index j = 0; j < tokens.cols(); ++j)
          if (!std::isfinite(tokens(i, j)))
            detail::throw_invalid("tokens(" + std::to_string(i) + ", " + std::to_string(j) + ")", tokens(i, j),
                                  "finite (no NaN or infinity in user-supplied tokens)");
    }
  }

  /// Largest token norm the spec can produce (Gaussian and orthonormal tokens have unit norm).
  double max_token_norm() const {
    if (kind != InputKind::User || tokens.size() == 0) return 1.0;
    return tokens.rowwise().norm().maxCoeff();
  }
};

/// Draws the tokens of one sequence. Reusable across samples: after the first call no allocation.
///
/// The random numbers of sample b are the SampleStream of (seed, b): the Gaussian kind reads the
/// shared direction c first, then z_0 .. z_{S-1}. They are float-precision normals for both scalar
/// types, so a float and a double run see the same inputs (up to the rounding of the normalisation).
///
/// Thread safety: one generator per thread.
class InputGenerator {
 public:
  /// \pre spec.validate() passes (checked here).
  InputGenerator(InputSpec spec, std::uint64_t seed) : spec_(std::move(spec)), stream_(seed) {
    spec_.validate();
  }

  const InputSpec& spec() const { return spec_; }

  /// Writes the S x d tokens of sample `sample` into `tokens` (resized if needed).
  template <class Scalar>
  void generate(std::uint64_t sample, Matrix<Scalar>& tokens) {
    tokens.resize(spec_.seq_len, spec_.dim);
    generate_into<Scalar>(sample, tokens);
  }

  /// Writes the S x d tokens of sample `sample` into an existing S x d matrix expression (for example
  /// an Eigen::Map of a row-major buffer): the same values as generate().
  /// \pre tokens is S x d.
  template <class Scalar, class Derived>
  void generate_into(std::uint64_t sample, Eigen::MatrixBase<Derived> const& tokens_) {
    auto& tokens = const_cast<Eigen::MatrixBase<Derived>&>(tokens_);
    const Index S = spec_.seq_len, d = spec_.dim;
    if (spec_.kind == InputKind::User) {
      tokens = spec_.tokens.cast<Scalar>();
      return;
    }
    stream_.start_sample(sample);
    if (spec_.kind == InputKind::Gaussian) {
      // One shared direction c, then S fresh directions z_i, in that order of the stream.
      normals_.resize((S + 1) * d);
      stream_.fill_normal(normals_.data(), normals_.size());
      const Eigen::Map<const Eigen::Array<float, 1, Eigen::Dynamic>> shared(normals_.data(), d);
      if (spec_.alpha >= 1.0) {
        const Eigen::Array<Scalar, 1, Eigen::Dynamic> direction = shared.template cast<Scalar>();
        const Scalar length = std::sqrt(direction.square().sum());
        for (Index i = 0; i < S; ++i) tokens.row(i) = (direction / length).matrix();
        return;
      }
      const Scalar lambda = static_cast<Scalar>(std::sqrt(spec_.alpha / (1.0 - spec_.alpha)));
      Eigen::Array<Scalar, 1, Eigen::Dynamic>& shared_scaled = shared_scaled_<Scalar>();
      Eigen::Array<Scalar, 1, Eigen::Dynamic>& row = row_<Scalar>();
      auto& rows = rows_<Scalar>();
      shared_scaled = lambda * shared.template cast<Scalar>();
      rows.resize(S, d);
      // Contiguous rows; Eigen's packet reductions for |r|^2 (a plain loop's float sum would not be
      // vectorised without -ffast-math): x = r / |r|, r = z_i + lambda c.
      for (Index i = 0; i < S; ++i) {
        row = Eigen::Map<const Eigen::Array<float, 1, Eigen::Dynamic>>(normals_.data() + (i + 1) * d, d)
                  .template cast<Scalar>() + shared_scaled;
        const Scalar inv_length = Scalar(1) / std::sqrt(row.square().sum());
        Eigen::Map<Eigen::Array<Scalar, 1, Eigen::Dynamic>>(rows.data() + i * d, d) = row * inv_length;
      }
      tokens = rows;
      return;
    }
    // Orthonormal: the Q factor of a d x S Gaussian matrix, with the signs fixed by R's diagonal,
    // is Haar-distributed; its columns are the tokens.
    normals_.resize(d * S);
    stream_.fill_normal(normals_.data(), normals_.size());
    frame_ = Eigen::Map<const Matrix<float>>(normals_.data(), d, S).cast<double>();
    qr_.compute(frame_);
    basis_ = qr_.householderQ() * Matrix<double>::Identity(d, S);
    for (Index j = 0; j < S; ++j)
      if (qr_.matrixQR()(j, j) < 0) basis_.col(j) = -basis_.col(j);
    tokens = basis_.transpose().template cast<Scalar>();
  }

  /// The frame generate_triangular_into writes in: width min(n, d'), lead 1 when there is a shared
  /// direction (0 < alpha), where n = S + lead vectors are drawn (1 when alpha = 1) in d' = d
  /// dimensions, or d - 1 with drop_mean. \pre Gaussian inputs
  TriangularFrame triangular_frame(bool drop_mean) const {
    // (The checks on this per-sample path build their messages only when they fail.)
    if (spec_.kind != InputKind::Gaussian)
      detail::throw_invalid("input kind", to_string(spec_.kind), "gaussian for the triangular frame");
    return {std::max<Index>(1, std::min(drawn_vectors(), frame_dimensions(drop_mean))), spec_.alpha > 0 ? 1 : 0};
  }

  /// Writes sample `sample`'s tokens in the sequence's own triangular frame: S rows of
  /// triangular_frame(drop_mean).width columns whose Gram matrix is distributed exactly as that of
  /// generate()'s tokens (with drop_mean: as that of the tokens minus their mean coordinate), for
  /// Gaussian inputs. Every computation that only sees dot products of the tokens (no RoPE, a norm
  /// that commutes with rotations) gives results with the same distribution from these rows, at
  /// width min(S + 1, d) instead of d and with the zeros above the diagonal to skip.
  ///
  /// The drawn vectors v_0 .. v_{n-1} (c first when 0 < alpha < 1, then z_0 .. z_{S-1}) form an
  /// n x d standard normal matrix V. Its LQ factorisation V = R Q (Gram-Schmidt of the rows in order)
  /// has a lower-trapezoidal R whose entries are independent (Bartlett): R(r, k) ~ N(0, 1) for k < r
  /// and R(r, r) ~ chi(d - r). Token i is then row i of (R_z + lambda R_c) normalised, in the frame
  /// of Q's rows. With drop_mean the direction 1 / sqrt(d) is split off first: the tokens' mean
  /// coordinates m ~ N(0, 1) enter the normalisation of the inputs only, and R is drawn in the
  /// d - 1 dimensions orthogonal to 1 (what LayerNorm sees of each token).
  ///
  /// The random numbers of sample b are the SampleStream of (seed, b), used otherwise than by
  /// generate(): the mean coordinates (drop_mean only), the entries below the diagonal row by row,
  /// then the diagonal (draw_chi_diagonal, which also reads the uniform sequence). Row 0 of R is c,
  /// chi(d') e_0, so all a token needs is its own row of R, the first diagonal entry and m.
  /// \pre `out` is S x triangular_frame(drop_mean).width (std::invalid_argument otherwise)
  template <class Scalar, class Derived>
  void generate_triangular_into(std::uint64_t sample, Eigen::MatrixBase<Derived> const& out_, bool drop_mean) {
    auto& rows = const_cast<Eigen::MatrixBase<Derived>&>(out_);
    const TriangularFrame frame = triangular_frame(drop_mean);
    const Index S = spec_.seq_len, w = frame.width, lead = frame.lead;
    const Index drawn = drawn_vectors(), dof = frame_dimensions(drop_mean);
    const Index diagonal = std::min(drawn, w);
    if (rows.rows() != S || rows.cols() != w)
      detail::throw_invalid("frame rows shape", std::to_string(rows.rows()) + " x " + std::to_string(rows.cols()),
                            "S x width = " + std::to_string(S) + " x " + std::to_string(w));
    if (dof == 0) {  // d = 1 with drop_mean: nothing is orthogonal to 1
      rows.setZero();
      return;
    }
    stream_.start_sample(sample);
    Index below = 0;
    for (Index r = 0; r < drawn; ++r) below += std::min(r, w);
    const Index means = drop_mean ? drawn : 0;
    // P floats of slack at the end: the rows' sums of squares read whole packets (squared_norm).
    normals_.resize(means + below + diagonal + detail::packet_size<float>());
    chi_.resize(static_cast<std::size_t>(diagonal));
    if (chi_roots_dof_ != dof || static_cast<Index>(chi_roots_.size()) != diagonal) {
      chi_roots_.assign(static_cast<std::size_t>(diagonal), 0.0);
      for (Index r = 0; r < diagonal && dof - r >= 2; ++r)
        chi_roots_[static_cast<std::size_t>(r)] = detail::chi_root(detail::chi_constant(dof - r));
      chi_roots_dof_ = dof;
    }
    stream_.fill_normal(normals_.data(), means + below);
    draw_chi_diagonal(stream_, dof, diagonal, normals_.data() + means + below, chi_.data(), chi_roots_.data());
    auto mean = [&](Index r) { return drop_mean ? static_cast<Scalar>(normals_[r]) : Scalar(0); };
    // Row 0 of R is c = chi(d') e_0 when there is a shared direction.
    const Scalar shared = lead > 0 ? static_cast<Scalar>(chi_[0]) : Scalar(0), shared_mean = lead > 0 ? mean(0) : Scalar(0);
    if (spec_.alpha >= 1) {  // every token is c / |c|
      rows.setZero();
      rows.col(0).setConstant(shared / std::sqrt(shared * shared + shared_mean * shared_mean));
      return;
    }
    const Scalar lambda = static_cast<Scalar>(std::sqrt(spec_.alpha / (1.0 - spec_.alpha)));
    // Row by row through a pointer (the kernel's state is row-major): a plain loop per row.
    constexpr bool row_pointer = (int(Derived::Flags) & Eigen::RowMajorBit) && (int(Derived::Flags) & Eigen::DirectAccessBit);
    auto& buffer = rows_<Scalar>();
    if constexpr (!row_pointer) buffer.resize(S, w);
    Scalar* out = row_pointer ? &rows.coeffRef(0, 0) : buffer.data();
    const Index stride = row_pointer ? rows.derived().outerStride() : w;
    // Row i: next[0 .. below_r) below the diagonal (column 0 plus lambda c's entry when there is a
    // lead), the diagonal entry, zeros; scaled to unit length together with the mean coordinate.
    // First every row's squared length, then all the scale factors at once, then the rows.
    const auto first_entry = [&](const float* next) {
      return lead > 0 ? static_cast<Scalar>(next[0]) + lambda * shared : Scalar(0);
    };
    const auto diagonal_entry_of = [&](Index r) {
      return r < w ? static_cast<Scalar>(chi_[static_cast<std::size_t>(r)]) : Scalar(0);
    };
    auto& factors = row_factors_<Scalar>();
    factors.resize(static_cast<std::size_t>(S));
    const float* next = normals_.data() + means;
    for (Index i = 0; i < S; ++i) {
      const Index r = i + lead, below_r = std::min(r, w);
      const Scalar first = first_entry(next), diagonal_entry = diagonal_entry_of(r);
      const Scalar mean_i = mean(r) + lambda * shared_mean;
      factors[static_cast<std::size_t>(i)] = detail::squared_norm<Scalar>(next + lead, below_r - lead) + first * first +
                                             diagonal_entry * diagonal_entry + mean_i * mean_i;
      next += below_r;
    }
    detail::invert_square_roots(factors.data(), S);
    next = normals_.data() + means;
    for (Index i = 0; i < S; ++i) {
      const Index r = i + lead, support = frame.support(i), below_r = std::min(r, w);
      const Scalar first = first_entry(next), diagonal_entry = diagonal_entry_of(r);
      const Scalar factor = factors[static_cast<std::size_t>(i)];
      Scalar* row = out + i * stride;
      for (Index k = 0; k < below_r; ++k) row[k] = static_cast<Scalar>(next[k]) * factor;
      next += below_r;
      if (lead > 0) row[0] = first * factor;
      if (r < w) row[r] = diagonal_entry * factor;
      std::fill(row + support, row + w, Scalar(0));
    }
    if constexpr (!row_pointer) rows = buffer;
  }

 private:
  /// The vectors the triangular frame is drawn from: c (when 0 < alpha) and z_0 .. z_{S-1}; c only at alpha = 1.
  Index drawn_vectors() const { return spec_.alpha >= 1 ? 1 : spec_.seq_len + (spec_.alpha > 0 ? 1 : 0); }
  /// The dimensions they are drawn in: d, or the d - 1 orthogonal to 1 with drop_mean.
  Index frame_dimensions(bool drop_mean) const { return spec_.dim - (drop_mean ? 1 : 0); }

  template <class Scalar>
  Eigen::Array<Scalar, 1, Eigen::Dynamic>& shared_scaled_() {
    if constexpr (std::is_same_v<Scalar, float>) return shared_scaled_f_;
    else return shared_scaled_d_;
  }
  template <class Scalar>
  Eigen::Array<Scalar, 1, Eigen::Dynamic>& row_() {
    row_f_.resize(spec_.dim);
    row_d_.resize(spec_.dim);
    if constexpr (std::is_same_v<Scalar, float>) return row_f_;
    else return row_d_;
  }
  template <class Scalar>
  std::vector<Scalar>& row_factors_() {
    if constexpr (std::is_same_v<Scalar, float>) return row_factors_f_;
    else return row_factors_d_;
  }
  template <class Scalar>
  Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>& rows_() {
    if constexpr (std::is_same_v<Scalar, float>) return rows_f_;
    else return rows_d_;
  }

  InputSpec spec_;
  SampleStream stream_;
  Eigen::ArrayXf normals_;
  Eigen::Array<float, 1, Eigen::Dynamic> shared_scaled_f_, row_f_;
  Eigen::Array<double, 1, Eigen::Dynamic> shared_scaled_d_, row_d_;
  Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> rows_f_;
  Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> rows_d_;
  std::vector<double> chi_;  ///< the diagonal of the Bartlett factor (generate_triangular_into)
  std::vector<float> row_factors_f_;  ///< generate_triangular_into: squared row lengths, then 1 / length
  std::vector<double> row_factors_d_;
  std::vector<double> chi_roots_;  ///< draw_chi_diagonal's constants for chi_roots_dof_
  Index chi_roots_dof_ = -1;
  Matrix<double> frame_, basis_;
  Eigen::HouseholderQR<Matrix<double>> qr_;
};

}  // namespace maskpos
