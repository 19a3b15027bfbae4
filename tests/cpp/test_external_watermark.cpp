// External watermarks from C++: two pipelines that each hold one hash partition of a stream's
// keys, given the stream's watermark steps, emit the rows of one pipeline fed the whole stream;
// their checkpoints re-split onto three partitions continue alike.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include <cusense/cusense.hpp>

namespace cusense {
namespace {

using row = std::tuple<std::int64_t, std::int64_t, std::uint32_t, double, std::int64_t>;

pipeline_options session_options(bool external)
{
  pipeline_options o;
  o.window               = window_spec::session(20);
  o.aggs                 = {agg::count, agg::sum};
  o.max_out_of_orderness = 15;
  o.allowed_lateness     = 10;
  o.where                = backend::cpu;
  o.external_watermark   = external;
  return o;
}

template <typename T>
std::vector<T> const& col(table const& t, char const* name)
{
  for (column const& c : t.columns) {
    if (c.name == name) { return std::get<std::vector<T>>(c.data); }
  }
  throw std::runtime_error(std::string("no column ") + name);
}

// (position, window_start, key, sum, count) of each row; position 0 when there is none.
void take_rows(table const& t, std::vector<row>& out, bool positions)
{
  auto const& key   = col<std::uint32_t>(t, "key");
  auto const& start = col<std::int64_t>(t, "window_start");
  auto const& sum   = col<double>(t, "sum");
  auto const& count = col<std::int64_t>(t, "count");
  for (std::size_t i = 0; i < key.size(); ++i) {
    out.emplace_back(positions ? col<std::int64_t>(t, "position")[i] : 0, start[i], key[i], sum[i],
                     count[i]);
  }
}

// Routes the stream through `parts` pipelines as the partitioned pipeline's router does.
struct router {
  std::int64_t next = 0;
  bool has_max      = false;
  std::int64_t max  = 0;

  void push(std::vector<pipeline>& pipes, std::vector<std::uint32_t> const& k,
            std::vector<std::int64_t> const& t, std::vector<double> const& v)
  {
    auto const parts = static_cast<std::uint32_t>(pipes.size());
    std::vector<std::vector<std::uint32_t>> pk(parts);
    std::vector<std::vector<std::int64_t>> pt(parts), pos(parts), at(parts), wm(parts), sp(parts);
    std::vector<std::vector<double>> pv(parts);
    for (std::size_t i = 0; i < k.size(); ++i) {
      std::int64_t const g   = next++;
      std::uint32_t const p  = partition_of(k[i], parts);
      pk[p].push_back(k[i]);
      pt[p].push_back(t[i]);
      pv[p].push_back(v[i]);
      pos[p].push_back(2 * g);
      if (!has_max || t[i] > max) {
        has_max = true;
        max     = t[i];
        for (std::uint32_t q = 0; q < parts; ++q) {
          at[q].push_back(static_cast<std::int64_t>(pk[q].size()));
          wm[q].push_back(max - 15);
          sp[q].push_back(2 * g + 1);
        }
      }
    }
    for (std::uint32_t q = 0; q < parts; ++q) {
      watermark_steps s{at[q].data(), wm[q].data(), sp[q].data(), at[q].size()};
      pipes[q].push(pk[q].data(), pt[q].data(), pv[q].data(), pk[q].size(), pos[q].data(), s);
    }
  }
};

std::vector<row> merged(std::vector<pipeline>& pipes, bool flush)
{
  std::vector<row> rows;
  for (pipeline& p : pipes) take_rows(flush ? p.flush() : p.poll(), rows, true);
  // (position, window_start, key) is unique among window rows of distinct keys; rows of one
  // key keep their order (stable).
  std::stable_sort(rows.begin(), rows.end(), [](row const& a, row const& b) {
    return std::tie(std::get<0>(a), std::get<1>(a), std::get<2>(a)) <
           std::tie(std::get<0>(b), std::get<1>(b), std::get<2>(b));
  });
  for (row& r : rows) std::get<0>(r) = 0;
  return rows;
}

TEST(external_watermark, partitions_rekeyed_midway_give_the_single_pipeline_rows)
{
  std::mt19937_64 rng(std::random_device{}());
  pipeline single(session_options(false));
  std::vector<pipeline> pipes;
  for (int i = 0; i < 2; ++i) pipes.emplace_back(session_options(true));
  router route;
  std::vector<row> want, got;
  auto const dir = std::filesystem::temp_directory_path() / ("cusense_ext_" + std::to_string(rng()));
  std::filesystem::create_directories(dir);
  for (int batch = 0; batch < 40; ++batch) {
    std::vector<std::uint32_t> k;
    std::vector<std::int64_t> t;
    std::vector<double> v;
    for (int i = 0; i < 50; ++i) {
      k.push_back(static_cast<std::uint32_t>(rng() % 30));
      t.push_back(batch * 100 + i * 2 - static_cast<std::int64_t>(rng() % 60));
      v.push_back(static_cast<double>(rng() % 1000) / 8);
    }
    single.push(k.data(), t.data(), v.data(), k.size());
    take_rows(single.poll(), want, false);
    route.push(pipes, k, t, v);
    auto rows = merged(pipes, false);
    got.insert(got.end(), rows.begin(), rows.end());
    if (batch == 20) {  // 2 partitions -> 3
      std::vector<std::string> in, out;
      for (std::size_t i = 0; i < pipes.size(); ++i) {
        in.push_back((dir / ("in" + std::to_string(i))).string());
        pipes[i].checkpoint(in.back());
      }
      for (int i = 0; i < 3; ++i) out.push_back((dir / ("out" + std::to_string(i))).string());
      pipeline::rekey_checkpoints(in, out);
      pipes.clear();
      for (auto const& path : out) pipes.push_back(pipeline::restore(path, backend::cpu));
    }
  }
  take_rows(single.flush(), want, false);
  auto rows = merged(pipes, true);
  got.insert(got.end(), rows.begin(), rows.end());
  EXPECT_EQ(got, want);
  EXPECT_GT(want.size(), 100u);
  std::uint64_t late = 0;
  for (pipeline& p : pipes) late += p.stats().records_late;
  EXPECT_EQ(late, single.stats().records_late);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace cusense
