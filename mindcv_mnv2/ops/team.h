// The kernels' worker threads: one team per process, in place of OpenMP's parallel regions.
//
// Why not OpenMP: with OMP_WAIT_POLICY=PASSIVE (which training needs, so that idle kernel threads
// leave the cores to MindSpore's own thread pool) every parallel region starts by waking a sleeping
// thread, ~45 us on a 2-core VM; the folded network runs ~25 regions back to back per batch. With
// libgomp's spinning policies the wait is a count of pause instructions whose length differs by CPU,
// and it cannot change at run time. Here an idle worker spins for a time (spin_us(), set per use:
// long while inference runs kernel after kernel, short in training) and then sleeps.
//
// parallel(body) runs body(t, nt) for t = 0 .. nt - 1, the calling thread being t = 0, and returns when
// all have; nt = threads(). When the team is in use (a call from another thread, or from inside a
// body) or the work is too small, body(0, 1) runs on the caller alone, as OpenMP's if(false) does.
// Every kernel computes each output element on one thread in a fixed order, so results never depend
// on nt or on which thread ran what.
#pragma once
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <new>
#include <thread>
#include <vector>

namespace mnv2 {

// The CPUs this process may use: the team's default size.
inline int cpus_available() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  return std::max(1u, std::thread::hardware_concurrency());
}

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

// Hidden: the team (its static instance) must be this library's own. Exported, the dynamic linker would
// bind a second build of the kernels loaded into the same process (another -march, a benchmark's A/B)
// to the first one's team, whatever its layout.
class __attribute__((visibility("hidden"))) Team {
 public:
  // The process's team (made on first use, never destroyed: its threads end with the process).
  static Team &get() {
    static Team *team = new Team();
    return *team;
  }
  int size() const { return size_; }
  std::atomic<int64_t> &spin_ns() { return spin_ns_; }
  // The size a team made later will have (0: cpus_available()). Not from OMP_NUM_THREADS here:
  // MindSpore sets it to 1 in the C environment when it loads; the Python side passes the user's.
  static std::atomic<int> &requested_size() {
    static std::atomic<int> n{0};
    return n;
  }

  template <class F>
  void run(F &body, bool enable) {
    bool expected = false;
    if (!enable || size_ == 1 || in_body() || !busy_.compare_exchange_strong(expected, true)) {
      body(0, 1);
      return;
    }
    if (pid_ != getpid()) restart();  // a forked child has none of the parent's threads
    fn_ = [](void *ctx, int t, int nt) { (*static_cast<F *>(ctx))(t, nt); };
    ctx_ = &body;
    pending_.store(size_ - 1, std::memory_order_relaxed);
    generation_.fetch_add(1, std::memory_order_seq_cst);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (sleepers_ > 0) wake_.notify_all();
    }
    in_body() = true;
    body(0, size_);
    in_body() = false;
    // The workers' shares are as large as the caller's: wait for them spinning a little, then asleep,
    // so that a worker without a core of its own (more processes than cores: mpirun, pytest -n) gets ours.
    const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(WAIT_SPIN_US);
    for (int64_t k = 1; pending_.load(std::memory_order_acquire) != 0; ++k) {
      if (k % 64 != 0 || std::chrono::steady_clock::now() < until) {
        cpu_relax();
        continue;
      }
      std::unique_lock<std::mutex> lock(mutex_);
      caller_waits_ = true;
      done_.wait(lock, [&] { return pending_.load(std::memory_order_acquire) == 0; });
      caller_waits_ = false;
    }
    busy_.store(false, std::memory_order_release);
  }

 private:
  Team() : size_(requested_size() > 0 ? requested_size().load() : cpus_available()) { restart(); }

  static bool &in_body() {
    thread_local bool flag = false;
    return flag;
  }

  void restart() {
    if (pid_ != 0) {  // after fork: the parent's threads may have held these
      new (&mutex_) std::mutex();
      new (&wake_) std::condition_variable();
      new (&done_) std::condition_variable();
      sleepers_ = 0;
      caller_waits_ = false;
    }
    pid_ = getpid();
    // The jobs a worker waits for are those after this one: read here, not on the new thread, which
    // may start after the next job was posted.
    const uint64_t seen = generation_.load(std::memory_order_acquire);
    for (int t = 1; t < size_; ++t) std::thread(&Team::work, this, t, seen).detach();
  }

  void work(int t, uint64_t seen) {
    in_body() = true;  // kernels called from a body run on their thread alone
    for (;;) {
      const auto until = std::chrono::steady_clock::now() + std::chrono::nanoseconds(spin_ns_.load());
      uint64_t g;
      for (int64_t k = 1; (g = generation_.load(std::memory_order_acquire)) == seen; ++k) {
        if (k % 64 != 0) {
          cpu_relax();
          continue;
        }
        if (std::chrono::steady_clock::now() < until) continue;
        std::unique_lock<std::mutex> lock(mutex_);
        ++sleepers_;
        wake_.wait(lock, [&] { return generation_.load(std::memory_order_acquire) != seen; });
        --sleepers_;
      }
      seen = g;
      fn_(ctx_, t, size_);
      if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {  // the last one: wake the caller if it sleeps
        std::lock_guard<std::mutex> lock(mutex_);
        if (caller_waits_) done_.notify_one();
      }
    }
  }

  const int size_;
  pid_t pid_ = 0;
  std::atomic<bool> busy_{false};
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<int64_t> spin_ns_{100000};
  void (*fn_)(void *, int, int) = nullptr;
  void *ctx_ = nullptr;
  std::mutex mutex_;
  std::condition_variable wake_, done_;
  int sleepers_ = 0;
  bool caller_waits_ = false;
  static constexpr int64_t WAIT_SPIN_US = 50;  // the caller's spin before it sleeps (the workers': spin_ns_)
};

// Threads the kernels split their work over.
inline int threads() { return Team::get().size(); }

// body(t, nt) on the team (see the top of this file); on the caller alone when enable is false.
template <class F>
void parallel(F &&body, bool enable = true) {
  Team::get().run(body, enable);
}

// Thread t's share [*b, *e) of n items among nt: contiguous, the first n % nt threads one more
// (OpenMP's schedule(static)).
inline void share(int64_t n, int t, int nt, int64_t *b, int64_t *e) {
  const int64_t q = n / nt, r = n % nt;
  *b = q * t + std::min<int64_t>(t, r);
  *e = *b + q + (t < r ? 1 : 0);
}

// f(i) for thread t's share of [0, n) (inside a body).
template <class F>
void for_share(int64_t n, int t, int nt, F &&f) {
  int64_t b, e;
  share(n, t, nt, &b, &e);
  for (int64_t i = b; i < e; ++i) f(i);
}

// f(i) for i in [0, n), split over the team as share() does.
template <class F>
void parallel_for(int64_t n, F &&f, bool enable = true) {
  parallel(
      [&](int t, int nt) { for_share(n, t, nt, f); },
      enable && n > 1);
}

}  // namespace mnv2
