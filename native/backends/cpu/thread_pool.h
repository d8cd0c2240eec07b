// A fixed pool of worker threads that run one job at a time, ggml-style: every thread
// calls fn(ith, nth) and the caller waits for all of them. A decode step runs hundreds of
// such jobs, so workers spin briefly between jobs (waking a sleeping thread costs more
// than a small matrix-vector product) and only then sleep, so an idle model burns no CPU.
// When another process holds a core, a worker may not get to a job for a whole scheduler
// time slice: the caller then runs that worker's share itself (each share is claimed once),
// so a busy machine slows decoding down gracefully instead of stalling every job.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace pyresa::cpu {

class ThreadPool {
 public:
  explicit ThreadPool(int n_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_threads_; }
  // Runs fn(ith, nth) for ith in [0, nth) — the calling thread is ith 0 — and returns when all are done.
  void run(const std::function<void(int ith, int nth)>& fn);

 private:
  void worker_loop(int ith);

  int n_threads_;
  std::vector<std::thread> workers_;
  bool claim(int ith);  // true for the one thread that gets to run share ith of the current job

  std::atomic<const std::function<void(int, int)>*> job_{nullptr};
  std::unique_ptr<std::atomic<int>[]> claimed_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> remaining_{0};
  std::atomic<int> sleeping_{0};
  std::atomic<bool> stop_{false};
  std::mutex mutex_;
  std::condition_variable wake_;
};

// Physical cores of this machine (hyper-threads do not help memory-bound decoding).
int physical_core_count();

}  // namespace pyresa::cpu
