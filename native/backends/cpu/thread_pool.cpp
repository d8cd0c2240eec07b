#include "backends/cpu/thread_pool.h"

#include <fstream>
#include <set>
#include <string>
#include <utility>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define PYRESA_PAUSE() _mm_pause()
#else
#define PYRESA_PAUSE() _mm_pause()
#endif

namespace pyresa::cpu {

namespace {
constexpr int kSpinsBeforeSleep = 1 << 17;  // ~ a few ms of spinning between jobs
}

ThreadPool::ThreadPool(int n_threads)
    : n_threads_(n_threads < 1 ? 1 : n_threads), claimed_(new std::atomic<int>[n_threads < 1 ? 1 : n_threads]) {
  for (int i = 0; i < n_threads_; ++i) claimed_[i].store(1);
  for (int i = 1; i < n_threads_; ++i) workers_.emplace_back([this, i] { worker_loop(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_.store(true);
    generation_.fetch_add(1);
  }
  wake_.notify_all();
  for (auto& w : workers_) w.join();
}

bool ThreadPool::claim(int ith) { return claimed_[ith].exchange(1, std::memory_order_acq_rel) == 0; }

void ThreadPool::run(const std::function<void(int, int)>& fn) {
  if (n_threads_ == 1) {
    fn(0, 1);
    return;
  }
  // Order matters: a worker still holding an old generation can only claim a share after the
  // shares are reset below, and by then job_ already points at this job.
  job_.store(&fn, std::memory_order_release);
  remaining_.store(n_threads_ - 1, std::memory_order_relaxed);
  for (int i = 1; i < n_threads_; ++i) claimed_[i].store(0, std::memory_order_release);
  {
    // Publishing under the mutex pairs with the sleeper's predicate check, so no wake-up is lost.
    std::lock_guard<std::mutex> lock(mutex_);
    generation_.fetch_add(1, std::memory_order_release);
  }
  if (sleeping_.load(std::memory_order_acquire) > 0) wake_.notify_all();
  fn(0, n_threads_);
  // Shares no worker has started yet are run here rather than waited for.
  for (int i = 1; i < n_threads_; ++i) {
    if (claim(i)) {
      fn(i, n_threads_);
      remaining_.fetch_sub(1, std::memory_order_acq_rel);
    }
  }
  while (remaining_.load(std::memory_order_acquire) != 0) PYRESA_PAUSE();
}

void ThreadPool::worker_loop(int ith) {
  uint64_t seen = 0;
  for (;;) {
    int spins = 0;
    uint64_t gen;
    while ((gen = generation_.load(std::memory_order_acquire)) == seen) {
      if (++spins < kSpinsBeforeSleep) {
        PYRESA_PAUSE();
        continue;
      }
      std::unique_lock<std::mutex> lock(mutex_);
      sleeping_.fetch_add(1);
      wake_.wait(lock, [&] { return generation_.load(std::memory_order_acquire) != seen; });
      sleeping_.fetch_sub(1);
      spins = 0;
    }
    seen = gen;
    if (stop_.load()) return;
    if (!claim(ith)) continue;  // the caller already ran this share
    (*job_.load(std::memory_order_acquire))(ith, n_threads_);
    remaining_.fetch_sub(1, std::memory_order_acq_rel);
  }
}

int physical_core_count() {
  std::set<std::pair<std::string, std::string>> cores;
  unsigned n_logical = std::thread::hardware_concurrency();
  for (unsigned cpu = 0; cpu < n_logical; ++cpu) {
    std::string base = "/sys/devices/system/cpu/cpu" + std::to_string(cpu) + "/topology/";
    std::ifstream pkg(base + "physical_package_id"), core(base + "core_id");
    std::string p, c;
    if (!(pkg >> p) || !(core >> c)) return n_logical ? static_cast<int>(n_logical) : 1;
    cores.emplace(p, c);
  }
  return cores.empty() ? 1 : static_cast<int>(cores.size());
}

}  // namespace pyresa::cpu
