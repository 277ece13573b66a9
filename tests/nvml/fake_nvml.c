/*
 * A fake libnvidia-ml.so.1 for tests.
 *
 * nvidia-ml-py loads the real library with CDLL("libnvidia-ml.so.1") and looks
 * every function up by name; building this file under that name and putting it
 * first on LD_LIBRARY_PATH runs the binding's own ctypes code (struct layouts,
 * buffer sizes, return-code handling) against GPUs that exist only in a config
 * file, so the agent is exercised as in production without a GPU.
 *
 * The config is a key=value text file named by FAKE_NVML_CONFIG, read when the
 * first nvmlInit* call initialises the library:
 *
 *   driver_version=580.95.05        cuda_driver_version=13000
 *   init_error=DRIVER_NOT_LOADED    (nvmlInit* returns it)
 *   gpu_count=8
 *   gpu.N.KEY=VALUE                 per GPU; gpu.*.KEY applies to every GPU
 *   fail.FUNCTION=CODE              every call of FUNCTION returns CODE
 *   gpu.N.fail.FUNCTION=CODE        ... for GPU N only (gpu.*.fail.* for all)
 *   gpu.N.fail.field.ID=CODE        field ID's own result in nvmlDeviceGetFieldValues
 *   xids=GPU:XID,GPU:XID            queued for nvmlEventSetWait_v2, in order
 *   trace=PATH                      append the name of every call to PATH
 *   state=PATH                      where the nvmlDeviceSet* calls keep what they set
 *   gpu.N.cc.*                      attestation evidence: see "confidential computing"
 *
 * The setters (persistence, ECC, MIG and compute mode) append gpu.N.KEY=VALUE lines
 * to the state file, read after the config at every first nvmlInit, so a mode one
 * process sets is what the next one reads: the driver's state outlives a process.
 *
 * CODE is a number or a name without its NVML_ERROR_ prefix (NOT_SUPPORTED,
 * GPU_IS_LOST, ...). Per-GPU keys and their defaults are in the functions below.
 * Built with -DFAKE_NVML_OLD_DRIVER it lacks the symbols newer drivers added,
 * so the binding raises NVMLError_FunctionNotFound for them, and the field
 * values newer drivers added, so those fields report their own error.
 */

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef int nvmlReturn_t;

#define NVML_SUCCESS 0
#define NVML_ERROR_UNINITIALIZED 1
#define NVML_ERROR_INVALID_ARGUMENT 2
#define NVML_ERROR_NOT_SUPPORTED 3
#define NVML_ERROR_INSUFFICIENT_SIZE 7
#define NVML_ERROR_TIMEOUT 10
#define NVML_ERROR_RESET_REQUIRED 16
#define NVML_ERROR_UNKNOWN 999

#define EVENT_XID_CRITICAL_ERROR 0x8ULL

#define MAX_ENTRIES 2048
#define MAX_GPUS 64
#define MAX_XIDS 256

static const struct {
    const char *name;
    nvmlReturn_t code;
    const char *text;
} errors[] = {
    {"SUCCESS", 0, "Success"},
    {"UNINITIALIZED", 1, "Uninitialized"},
    {"INVALID_ARGUMENT", 2, "Invalid Argument"},
    {"NOT_SUPPORTED", 3, "Not Supported"},
    {"NO_PERMISSION", 4, "Insufficient Permissions"},
    {"ALREADY_INITIALIZED", 5, "Already Initialized"},
    {"NOT_FOUND", 6, "Not Found"},
    {"INSUFFICIENT_SIZE", 7, "Insufficient Size"},
    {"INSUFFICIENT_POWER", 8, "Insufficient External Power"},
    {"DRIVER_NOT_LOADED", 9, "Driver Not Loaded"},
    {"TIMEOUT", 10, "Timeout"},
    {"IRQ_ISSUE", 11, "Interrupt Request Issue"},
    {"LIBRARY_NOT_FOUND", 12, "NVML Shared Library Not Found"},
    {"FUNCTION_NOT_FOUND", 13, "Function Not Found"},
    {"CORRUPTED_INFOROM", 14, "Corrupted infoROM"},
    {"GPU_IS_LOST", 15, "GPU is lost"},
    {"RESET_REQUIRED", 16, "GPU requires restart"},
    {"OPERATING_SYSTEM", 17, "The operating system has blocked the request."},
    {"LIB_RM_VERSION_MISMATCH", 18, "RM has detected an NVML/RM version mismatch."},
    {"MEMORY", 20, "Insufficient Memory"},
    {"UNKNOWN", 999, "Unknown Error"},
};

struct entry {
    char key[128];
    char value[512];
};

/* A device handle points at one of these; the binding treats it as opaque. */
struct fake_gpu {
    int index;
    unsigned long long registered_events;
};

struct fake_event_set {
    int allocated;
};

struct queued_xid {
    int gpu;
    unsigned long long xid;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct entry entries[MAX_ENTRIES];
static int n_entries;
static int init_count;
static struct fake_gpu gpus[MAX_GPUS];
static int gpu_count;
static struct fake_event_set event_set;
static struct queued_xid xids[MAX_XIDS];
static int n_xids;
static int next_xid;

static char *trim(char *s) {
    char *end;
    while (*s == ' ' || *s == '\t') s++;
    end = s + strlen(s);
    while (end > s && (end[-1] == ' ' || end[-1] == '\t' || end[-1] == '\n' || end[-1] == '\r'))
        *--end = '\0';
    return s;
}

static const char *get(const char *key) {
    for (int i = n_entries - 1; i >= 0; i--)
        if (strcmp(entries[i].key, key) == 0) return entries[i].value;
    return NULL;
}

static const char *gpu_get(int gpu, const char *key) {
    char name[192];
    const char *value;
    snprintf(name, sizeof name, "gpu.%d.%s", gpu, key);
    value = get(name);
    if (value != NULL) return value;
    snprintf(name, sizeof name, "gpu.*.%s", key);
    return get(name);
}

static unsigned long long gpu_number(int gpu, const char *key, unsigned long long fallback) {
    const char *value = gpu_get(gpu, key);
    return value == NULL ? fallback : strtoull(value, NULL, 0);
}

static nvmlReturn_t parse_code(const char *value) {
    for (size_t i = 0; i < sizeof errors / sizeof errors[0]; i++)
        if (strcmp(errors[i].name, value) == 0) return errors[i].code;
    return (nvmlReturn_t)strtol(value, NULL, 0);
}

static int parse_xids(const char *spec) {
    char copy[512];
    char *save = NULL;
    snprintf(copy, sizeof copy, "%s", spec);
    n_xids = 0;
    for (char *item = strtok_r(copy, ",", &save); item != NULL; item = strtok_r(NULL, ",", &save)) {
        int gpu;
        unsigned long long xid;
        if (n_xids == MAX_XIDS || sscanf(item, " %d:%llu", &gpu, &xid) != 2) return -1;
        xids[n_xids].gpu = gpu;
        xids[n_xids].xid = xid;
        n_xids++;
    }
    return 0;
}

/* Appends the key=value lines of F to the entries, and closes it; later lines win. */
static nvmlReturn_t read_entries(FILE *f) {
    char line[768];
    while (fgets(line, sizeof line, f) != NULL) {
        char *text = trim(line);
        char *eq = strchr(text, '=');
        if (*text == '\0' || *text == '#') continue;
        if (eq == NULL || n_entries == MAX_ENTRIES) {
            fclose(f);
            fprintf(stderr, "fake libnvidia-ml: bad config line: %s\n", text);
            return NVML_ERROR_UNKNOWN;
        }
        *eq = '\0';
        snprintf(entries[n_entries].key, sizeof entries[n_entries].key, "%s", trim(text));
        snprintf(entries[n_entries].value, sizeof entries[n_entries].value, "%s", trim(eq + 1));
        n_entries++;
    }
    fclose(f);
    return NVML_SUCCESS;
}

static nvmlReturn_t load_config(void) {
    const char *path = getenv("FAKE_NVML_CONFIG");
    FILE *f;
    const char *value;
    nvmlReturn_t rc;

    n_entries = 0;
    if (path == NULL) {
        fprintf(stderr, "fake libnvidia-ml: FAKE_NVML_CONFIG is not set\n");
        return NVML_ERROR_UNKNOWN;
    }
    f = fopen(path, "r");
    if (f == NULL) {
        fprintf(stderr, "fake libnvidia-ml: cannot read %s\n", path);
        return NVML_ERROR_UNKNOWN;
    }
    rc = read_entries(f);
    if (rc != NVML_SUCCESS) return rc;
    value = get("state");
    if (value != NULL && (f = fopen(value, "r")) != NULL) {
        rc = read_entries(f);
        if (rc != NVML_SUCCESS) return rc;
    }

    value = get("gpu_count");
    gpu_count = value == NULL ? 1 : atoi(value);
    if (gpu_count < 0 || gpu_count > MAX_GPUS) return NVML_ERROR_UNKNOWN;
    for (int i = 0; i < gpu_count; i++) {
        gpus[i].index = i;
        gpus[i].registered_events = 0;
    }
    value = get("xids");
    n_xids = 0;
    next_xid = 0;
    if (value != NULL && parse_xids(value) != 0) return NVML_ERROR_UNKNOWN;
    return NVML_SUCCESS;
}

/* Lets a test check what was called, e.g. that every nvmlInit got its nvmlShutdown. */
static void trace(const char *function) {
    const char *path = get("trace");
    FILE *f;
    if (path == NULL || (f = fopen(path, "a")) == NULL) return;
    fprintf(f, "%s\n", function);
    fclose(f);
}

/* The injected result for FUNCTION on GPU (-1: not a device call), if any. */
static nvmlReturn_t injected(const char *function, int gpu) {
    char key[192];
    const char *value = NULL;
    snprintf(key, sizeof key, "fail.%s", function);
    if (gpu >= 0) value = gpu_get(gpu, key);
    if (value == NULL) value = get(key);
    return value == NULL ? NVML_SUCCESS : parse_code(value);
}

static int valid_device(const struct fake_gpu *dev) {
    return dev >= gpus && dev < gpus + gpu_count;
}

/* Common prologue of every device query: initialised, valid handle, no failure injected. */
#define DEVICE_CALL(dev)                                               \
    do {                                                               \
        nvmlReturn_t rc_;                                              \
        if (init_count == 0) return NVML_ERROR_UNINITIALIZED;          \
        trace(__func__);                                               \
        if (!valid_device(dev)) return NVML_ERROR_INVALID_ARGUMENT;    \
        rc_ = injected(__func__, (dev)->index);                        \
        if (rc_ != NVML_SUCCESS) return rc_;                           \
    } while (0)

#define SYSTEM_CALL()                                                  \
    do {                                                               \
        nvmlReturn_t rc_;                                              \
        if (init_count == 0) return NVML_ERROR_UNINITIALIZED;          \
        trace(__func__);                                               \
        rc_ = injected(__func__, -1);                                  \
        if (rc_ != NVML_SUCCESS) return rc_;                           \
    } while (0)

static nvmlReturn_t copy_string(const char *value, char *buf, unsigned int size) {
    if (buf == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    if (strlen(value) + 1 > size) return NVML_ERROR_INSUFFICIENT_SIZE;
    memcpy(buf, value, strlen(value) + 1);
    return NVML_SUCCESS;
}

static nvmlReturn_t gpu_string(const struct fake_gpu *dev, const char *key, const char *fallback,
                               char *buf, unsigned int size) {
    const char *value = gpu_get(dev->index, key);
    return copy_string(value == NULL ? fallback : value, buf, size);
}

/* ---- initialisation ---- */

nvmlReturn_t nvmlInitWithFlags(unsigned int flags) {
    nvmlReturn_t rc = NVML_SUCCESS;
    (void)flags;
    pthread_mutex_lock(&lock);
    if (init_count == 0) {
        rc = load_config();
        trace(__func__);
        if (rc == NVML_SUCCESS && get("init_error") != NULL) rc = parse_code(get("init_error"));
    } else {
        trace(__func__);
    }
    if (rc == NVML_SUCCESS) init_count++;
    pthread_mutex_unlock(&lock);
    return rc;
}

nvmlReturn_t nvmlInit_v2(void) { return nvmlInitWithFlags(0); }

nvmlReturn_t nvmlInit(void) { return nvmlInitWithFlags(0); }

nvmlReturn_t nvmlShutdown(void) {
    nvmlReturn_t rc = NVML_SUCCESS;
    pthread_mutex_lock(&lock);
    if (init_count == 0) {
        rc = NVML_ERROR_UNINITIALIZED;
    } else {
        trace(__func__);
        init_count--;
    }
    pthread_mutex_unlock(&lock);
    return rc;
}

const char *nvmlErrorString(nvmlReturn_t result) {
    for (size_t i = 0; i < sizeof errors / sizeof errors[0]; i++)
        if (errors[i].code == result) return errors[i].text;
    return "Unknown Error";
}

/* ---- system ---- */

nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    const char *value;
    SYSTEM_CALL();
    value = get("driver_version");
    return copy_string(value == NULL ? "580.95.05" : value, version, length);
}

static nvmlReturn_t cuda_driver_version(int *version) {
    const char *value = get("cuda_driver_version");
    if (version == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    *version = value == NULL ? 13000 : atoi(value);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlSystemGetCudaDriverVersion(int *version) {
    SYSTEM_CALL();
    return cuda_driver_version(version);
}

nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *version) {
    SYSTEM_CALL();
    return cuda_driver_version(version);
}

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count) {
    SYSTEM_CALL();
    if (count == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    *count = (unsigned int)gpu_count;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, struct fake_gpu **device) {
    nvmlReturn_t rc;
    if (init_count == 0) return NVML_ERROR_UNINITIALIZED;
    trace(__func__);
    if (device == NULL || index >= (unsigned int)gpu_count) return NVML_ERROR_INVALID_ARGUMENT;
    rc = injected(__func__, (int)index);
    if (rc != NVML_SUCCESS) return rc;
    *device = &gpus[index];
    return NVML_SUCCESS;
}

/* ---- identity and inventory ---- */

nvmlReturn_t nvmlDeviceGetName(struct fake_gpu *dev, char *name, unsigned int length) {
    DEVICE_CALL(dev);
    return gpu_string(dev, "name", "NVIDIA H100 80GB HBM3", name, length);
}

nvmlReturn_t nvmlDeviceGetUUID(struct fake_gpu *dev, char *uuid, unsigned int length) {
    char fallback[64];
    DEVICE_CALL(dev);
    snprintf(fallback, sizeof fallback, "GPU-00000000-0000-0000-0000-%012d", dev->index);
    return gpu_string(dev, "uuid", fallback, uuid, length);
}

nvmlReturn_t nvmlDeviceGetSerial(struct fake_gpu *dev, char *serial, unsigned int length) {
    char fallback[32];
    DEVICE_CALL(dev);
    snprintf(fallback, sizeof fallback, "1654123%06d", dev->index);
    return gpu_string(dev, "serial", fallback, serial, length);
}

nvmlReturn_t nvmlDeviceGetVbiosVersion(struct fake_gpu *dev, char *version, unsigned int length) {
    DEVICE_CALL(dev);
    return gpu_string(dev, "vbios", "96.00.99.00.01", version, length);
}

struct nvml_pci_info {
    char busIdLegacy[16];
    unsigned int domain;
    unsigned int bus;
    unsigned int device;
    unsigned int pciDeviceId;
    unsigned int pciSubSystemId;
    char busId[32];
};

nvmlReturn_t nvmlDeviceGetPciInfo_v3(struct fake_gpu *dev, struct nvml_pci_info *pci) {
    char fallback[32];
    const char *bus_id;
    unsigned int slot = 0, function = 0;
    DEVICE_CALL(dev);
    if (pci == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    memset(pci, 0, sizeof *pci);
    snprintf(fallback, sizeof fallback, "00000000:%02X:00.0", 0x18 + dev->index);
    bus_id = gpu_get(dev->index, "pci.bus_id");
    if (bus_id == NULL) bus_id = fallback;
    if (sscanf(bus_id, "%x:%x:%x.%x", &pci->domain, &pci->bus, &slot, &function) != 4)
        return NVML_ERROR_UNKNOWN;
    pci->device = slot;
    pci->pciDeviceId = (unsigned int)gpu_number(dev->index, "pci.device_id", 0x233010DE);
    pci->pciSubSystemId = (unsigned int)gpu_number(dev->index, "pci.subsystem_id", 0x16C110DE);
    snprintf(pci->busId, sizeof pci->busId, "%s", bus_id);
    snprintf(pci->busIdLegacy, sizeof pci->busIdLegacy, "%s", bus_id + 4);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetArchitecture(struct fake_gpu *dev, unsigned int *arch) {
    DEVICE_CALL(dev);
    if (arch == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    *arch = (unsigned int)gpu_number(dev->index, "architecture", 9); /* Hopper */
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetCudaComputeCapability(struct fake_gpu *dev, int *major, int *minor) {
    const char *value;
    DEVICE_CALL(dev);
    if (major == NULL || minor == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    value = gpu_get(dev->index, "compute_capability");
    if (value == NULL) value = "9.0";
    if (sscanf(value, "%d.%d", major, minor) != 2) return NVML_ERROR_UNKNOWN;
    return NVML_SUCCESS;
}

struct nvml_memory {
    unsigned long long total;
    unsigned long long free;
    unsigned long long used;
};

nvmlReturn_t nvmlDeviceGetMemoryInfo(struct fake_gpu *dev, struct nvml_memory *memory) {
    DEVICE_CALL(dev);
    if (memory == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    memory->total = gpu_number(dev->index, "memory.total", 85520809984ULL);
    memory->used = gpu_number(dev->index, "memory.used", 0);
    memory->free = memory->total - memory->used;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMigMode(struct fake_gpu *dev, unsigned int *current, unsigned int *pending) {
    DEVICE_CALL(dev);
    if (current == NULL || pending == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    *current = (unsigned int)gpu_number(dev->index, "mig.current", 0);
    *pending = (unsigned int)gpu_number(dev->index, "mig.pending", *current);
    return NVML_SUCCESS;
}

/* ---- settings: what nvidia-smi -pm, -e, -mig and -c change ---- */

/* Records gpu.N.KEY=VALUE for this process and, through the state file, the next. */
static nvmlReturn_t set_gpu_value(const struct fake_gpu *dev, const char *key,
                                  unsigned long long value) {
    const char *path = get("state");
    FILE *f;
    pthread_mutex_lock(&lock);
    if (n_entries == MAX_ENTRIES) {
        pthread_mutex_unlock(&lock);
        return NVML_ERROR_UNKNOWN;
    }
    snprintf(entries[n_entries].key, sizeof entries[n_entries].key, "gpu.%d.%s", dev->index, key);
    snprintf(entries[n_entries].value, sizeof entries[n_entries].value, "%llu", value);
    if (path != NULL && (f = fopen(path, "a")) != NULL) {
        fprintf(f, "%s=%s\n", entries[n_entries].key, entries[n_entries].value);
        fclose(f);
    }
    n_entries++;
    pthread_mutex_unlock(&lock);
    return NVML_SUCCESS;
}

/* nvmlEnableState_t: 0 disabled, 1 enabled. */
nvmlReturn_t nvmlDeviceGetPersistenceMode(struct fake_gpu *dev, unsigned int *mode) {
    DEVICE_CALL(dev);
    if (mode == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    *mode = (unsigned int)gpu_number(dev->index, "persistence_mode", 0);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceSetPersistenceMode(struct fake_gpu *dev, unsigned int mode) {
    DEVICE_CALL(dev);
    if (mode > 1) return NVML_ERROR_INVALID_ARGUMENT;
    return set_gpu_value(dev, "persistence_mode", mode);
}

/* ECC mode changes only at the next reboot: setting it sets the pending mode. */
nvmlReturn_t nvmlDeviceGetEccMode(struct fake_gpu *dev, unsigned int *current,
                                  unsigned int *pending) {
    DEVICE_CALL(dev);
    if (current == NULL || pending == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    *current = (unsigned int)gpu_number(dev->index, "ecc.current", 1);
    *pending = (unsigned int)gpu_number(dev->index, "ecc.pending", *current);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceSetEccMode(struct fake_gpu *dev, unsigned int mode) {
    DEVICE_CALL(dev);
    if (mode > 1) return NVML_ERROR_INVALID_ARGUMENT;
    return set_gpu_value(dev, "ecc.pending", mode);
}

/* MIG mode takes effect at once on an idle GPU; with gpu.N.mig.needs_reset=1 it
 * stays pending, and the activation status says a reset is required. */
nvmlReturn_t nvmlDeviceSetMigMode(struct fake_gpu *dev, unsigned int mode,
                                  nvmlReturn_t *activation) {
    nvmlReturn_t rc;
    DEVICE_CALL(dev);
    if (mode > 1 || activation == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    rc = set_gpu_value(dev, "mig.pending", mode);
    if (rc != NVML_SUCCESS) return rc;
    if (gpu_number(dev->index, "mig.needs_reset", 0)) {
        *activation = NVML_ERROR_RESET_REQUIRED;
        return NVML_SUCCESS;
    }
    *activation = NVML_SUCCESS;
    return set_gpu_value(dev, "mig.current", mode);
}

/* nvmlComputeMode_t: 0 default, 1 exclusive thread (removed), 2 prohibited,
 * 3 exclusive process. */
nvmlReturn_t nvmlDeviceGetComputeMode(struct fake_gpu *dev, unsigned int *mode) {
    DEVICE_CALL(dev);
    if (mode == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    *mode = (unsigned int)gpu_number(dev->index, "compute_mode", 0);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceSetComputeMode(struct fake_gpu *dev, unsigned int mode) {
    DEVICE_CALL(dev);
    if (mode > 3 || mode == 1) return NVML_ERROR_INVALID_ARGUMENT;
    return set_gpu_value(dev, "compute_mode", mode);
}

/* ---- health ---- */

struct nvml_temperature_v1 {
    unsigned int version;
    unsigned int sensorType;
    int temperature;
};

nvmlReturn_t nvmlDeviceGetTemperature(struct fake_gpu *dev, unsigned int sensor, unsigned int *temp) {
    DEVICE_CALL(dev);
    if (temp == NULL || sensor != 0) return NVML_ERROR_INVALID_ARGUMENT;
    *temp = (unsigned int)gpu_number(dev->index, "temperature", 35);
    return NVML_SUCCESS;
}

#ifndef FAKE_NVML_OLD_DRIVER
nvmlReturn_t nvmlDeviceGetTemperatureV(struct fake_gpu *dev, struct nvml_temperature_v1 *temp) {
    DEVICE_CALL(dev);
    if (temp == NULL || temp->version != 0x100000C || temp->sensorType != 0)
        return NVML_ERROR_INVALID_ARGUMENT;
    temp->temperature = (int)gpu_number(dev->index, "temperature", 35);
    return NVML_SUCCESS;
}
#endif

nvmlReturn_t nvmlDeviceGetPowerUsage(struct fake_gpu *dev, unsigned int *milliwatts) {
    DEVICE_CALL(dev);
    if (milliwatts == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    *milliwatts = (unsigned int)gpu_number(dev->index, "power.usage_mw", 72000);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetEnforcedPowerLimit(struct fake_gpu *dev, unsigned int *milliwatts) {
    DEVICE_CALL(dev);
    if (milliwatts == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    *milliwatts = (unsigned int)gpu_number(dev->index, "power.limit_mw", 700000);
    return NVML_SUCCESS;
}

/* nvmlClockType_t: 0 graphics, 1 SM, 2 memory. */
static nvmlReturn_t clock_mhz(const struct fake_gpu *dev, unsigned int type, const char *suffix,
                          unsigned int *mhz) {
    static const char *const names[] = {"graphics", "sm", "mem"};
    static const unsigned long long current[] = {345, 345, 2619};
    static const unsigned long long maximum[] = {1980, 1980, 2619};
    char key[64];
    if (mhz == NULL || type > 2) return NVML_ERROR_INVALID_ARGUMENT;
    snprintf(key, sizeof key, "clock.%s%s", names[type], suffix);
    *mhz = (unsigned int)gpu_number(dev->index, key, *suffix ? maximum[type] : current[type]);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetClockInfo(struct fake_gpu *dev, unsigned int type, unsigned int *mhz) {
    DEVICE_CALL(dev);
    return clock_mhz(dev, type, "", mhz);
}

nvmlReturn_t nvmlDeviceGetMaxClockInfo(struct fake_gpu *dev, unsigned int type, unsigned int *mhz) {
    DEVICE_CALL(dev);
    return clock_mhz(dev, type, "_max", mhz);
}

static nvmlReturn_t clock_events(const struct fake_gpu *dev, unsigned long long *reasons) {
    if (reasons == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    *reasons = gpu_number(dev->index, "clock_events", 0x1); /* GpuIdle */
    return NVML_SUCCESS;
}

/* Drivers before R535 only have the ...ThrottleReasons name for the same bits. */
nvmlReturn_t nvmlDeviceGetCurrentClocksThrottleReasons(struct fake_gpu *dev,
                                                       unsigned long long *reasons) {
    DEVICE_CALL(dev);
    return clock_events(dev, reasons);
}

#ifndef FAKE_NVML_OLD_DRIVER
nvmlReturn_t nvmlDeviceGetCurrentClocksEventReasons(struct fake_gpu *dev,
                                                    unsigned long long *reasons) {
    DEVICE_CALL(dev);
    return clock_events(dev, reasons);
}
#endif

/* nvmlMemoryErrorType_t: 0 corrected, 1 uncorrected; nvmlEccCounterType_t: 0 volatile, 1 aggregate. */
nvmlReturn_t nvmlDeviceGetTotalEccErrors(struct fake_gpu *dev, unsigned int error_type,
                                         unsigned int counter_type, unsigned long long *count) {
    char key[64];
    DEVICE_CALL(dev);
    if (count == NULL || error_type > 1 || counter_type > 1) return NVML_ERROR_INVALID_ARGUMENT;
    snprintf(key, sizeof key, "ecc.%s.%s", error_type ? "uncorrected" : "corrected",
             counter_type ? "aggregate" : "volatile");
    *count = gpu_number(dev->index, key, 0);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetRemappedRows(struct fake_gpu *dev, unsigned int *correctable,
                                       unsigned int *uncorrectable, unsigned int *pending,
                                       unsigned int *failure) {
    DEVICE_CALL(dev);
    if (correctable == NULL || uncorrectable == NULL || pending == NULL || failure == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    *correctable = (unsigned int)gpu_number(dev->index, "remap.correctable", 0);
    *uncorrectable = (unsigned int)gpu_number(dev->index, "remap.uncorrectable", 0);
    *pending = (unsigned int)gpu_number(dev->index, "remap.pending", 0);
    *failure = (unsigned int)gpu_number(dev->index, "remap.failure", 0);
    return NVML_SUCCESS;
}

/* nvmlPageRetirementCause_t: 0 multiple single-bit errors, 1 double-bit error. */
nvmlReturn_t nvmlDeviceGetRetiredPages(struct fake_gpu *dev, unsigned int cause,
                                       unsigned int *count, unsigned long long *addresses) {
    unsigned int pages;
    DEVICE_CALL(dev);
    if (count == NULL || cause > 1) return NVML_ERROR_INVALID_ARGUMENT;
    pages = (unsigned int)gpu_number(dev->index, cause ? "retired.dbe" : "retired.sbe", 0);
    if (*count < pages || (pages > 0 && addresses == NULL)) {
        *count = pages;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    for (unsigned int i = 0; i < pages; i++) addresses[i] = 0x1000ULL * (i + 1) + cause;
    *count = pages;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetRetiredPagesPendingStatus(struct fake_gpu *dev, unsigned int *pending) {
    DEVICE_CALL(dev);
    if (pending == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    *pending = (unsigned int)gpu_number(dev->index, "retired.pending", 0);
    return NVML_SUCCESS;
}

static nvmlReturn_t pcie(const struct fake_gpu *dev, const char *key, unsigned long long fallback,
                         unsigned int *value) {
    if (value == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    *value = (unsigned int)gpu_number(dev->index, key, fallback);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetCurrPcieLinkGeneration(struct fake_gpu *dev, unsigned int *gen) {
    DEVICE_CALL(dev);
    return pcie(dev, "pcie.gen", 5, gen);
}

nvmlReturn_t nvmlDeviceGetMaxPcieLinkGeneration(struct fake_gpu *dev, unsigned int *gen) {
    DEVICE_CALL(dev);
    return pcie(dev, "pcie.gen_max", 5, gen);
}

nvmlReturn_t nvmlDeviceGetCurrPcieLinkWidth(struct fake_gpu *dev, unsigned int *width) {
    DEVICE_CALL(dev);
    return pcie(dev, "pcie.width", 16, width);
}

nvmlReturn_t nvmlDeviceGetMaxPcieLinkWidth(struct fake_gpu *dev, unsigned int *width) {
    DEVICE_CALL(dev);
    return pcie(dev, "pcie.width_max", 16, width);
}

nvmlReturn_t nvmlDeviceGetPcieReplayCounter(struct fake_gpu *dev, unsigned int *replays) {
    DEVICE_CALL(dev);
    return pcie(dev, "pcie.replays", 0, replays);
}

struct nvml_utilization {
    unsigned int gpu;
    unsigned int memory;
};

nvmlReturn_t nvmlDeviceGetUtilizationRates(struct fake_gpu *dev, struct nvml_utilization *util) {
    DEVICE_CALL(dev);
    if (util == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    util->gpu = (unsigned int)gpu_number(dev->index, "util.gpu", 0);
    util->memory = (unsigned int)gpu_number(dev->index, "util.memory", 0);
    return NVML_SUCCESS;
}

struct nvml_process_info {
    unsigned int pid;
    unsigned long long usedGpuMemory;
    unsigned int gpuInstanceId;
    unsigned int computeInstanceId;
};

/* gpu.N.processes=PID:BYTES,PID:BYTES */
nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(struct fake_gpu *dev, unsigned int *count,
                                                     struct nvml_process_info *infos) {
    struct nvml_process_info found[64];
    unsigned int n = 0;
    const char *spec;
    DEVICE_CALL(dev);
    if (count == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    spec = gpu_get(dev->index, "processes");
    if (spec != NULL) {
        char copy[512];
        char *save = NULL;
        snprintf(copy, sizeof copy, "%s", spec);
        for (char *item = strtok_r(copy, ",", &save); item != NULL && n < 64;
             item = strtok_r(NULL, ",", &save)) {
            memset(&found[n], 0, sizeof found[n]);
            found[n].gpuInstanceId = 0xFFFFFFFF;
            found[n].computeInstanceId = 0xFFFFFFFF;
            if (sscanf(item, " %u:%llu", &found[n].pid, &found[n].usedGpuMemory) != 2)
                return NVML_ERROR_UNKNOWN;
            n++;
        }
    }
    if (*count < n || (n > 0 && infos == NULL)) {
        *count = n;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    if (n > 0) memcpy(infos, found, n * sizeof found[0]);
    *count = n;
    return NVML_SUCCESS;
}

/* ---- field values ---- */

#define NVML_VALUE_TYPE_UNSIGNED_INT 1
#define NVML_FI_DEV_GET_GPU_RECOVERY_ACTION 230

struct nvml_field_value {
    unsigned int fieldId;
    unsigned int scopeId;
    long long timestamp;
    long long latencyUsec;
    unsigned int valueType;
    nvmlReturn_t nvmlReturn;
    union {
        double dVal;
        unsigned int uiVal;
        unsigned long ulVal;
        unsigned long long ullVal;
        long long sllVal;
        int siVal;
        unsigned short usVal;
    } value;
};

/* One field's own result: the real call succeeds as a whole and reports each
 * field's error in its entry, which is how a driver answers an id it predates. */
static nvmlReturn_t field_value(const struct fake_gpu *dev, struct nvml_field_value *field) {
    char key[32];
    nvmlReturn_t rc;
    snprintf(key, sizeof key, "field.%u", field->fieldId);
    rc = injected(key, dev->index);
    if (rc != NVML_SUCCESS) return rc;
    switch (field->fieldId) {
#ifndef FAKE_NVML_OLD_DRIVER
    case NVML_FI_DEV_GET_GPU_RECOVERY_ACTION: /* nvmlDeviceGpuRecoveryAction_t */
        field->valueType = NVML_VALUE_TYPE_UNSIGNED_INT;
        field->value.uiVal = (unsigned int)gpu_number(dev->index, "recovery_action", 0);
        return NVML_SUCCESS;
#endif
    default:
        return NVML_ERROR_INVALID_ARGUMENT;
    }
}

nvmlReturn_t nvmlDeviceGetFieldValues(struct fake_gpu *dev, int count,
                                      struct nvml_field_value *values) {
    struct timespec now;
    DEVICE_CALL(dev);
    if (values == NULL || count <= 0) return NVML_ERROR_INVALID_ARGUMENT;
    clock_gettime(CLOCK_REALTIME, &now);
    for (int i = 0; i < count; i++) {
        values[i].timestamp = (long long)now.tv_sec * 1000000LL + now.tv_nsec / 1000;
        values[i].latencyUsec = 0;
        values[i].nvmlReturn = field_value(dev, &values[i]);
    }
    return NVML_SUCCESS;
}

/* ---- events ---- */

struct nvml_event_data {
    struct fake_gpu *device;
    unsigned long long eventType;
    unsigned long long eventData;
    unsigned int gpuInstanceId;
    unsigned int computeInstanceId;
};

nvmlReturn_t nvmlDeviceGetSupportedEventTypes(struct fake_gpu *dev, unsigned long long *types) {
    DEVICE_CALL(dev);
    if (types == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    *types = gpu_number(dev->index, "events.supported", 0x1F); /* ECC, PState, XID, Clock */
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlEventSetCreate(struct fake_event_set **set) {
    SYSTEM_CALL();
    if (set == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    pthread_mutex_lock(&lock);
    event_set.allocated = 1;
    pthread_mutex_unlock(&lock);
    *set = &event_set;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceRegisterEvents(struct fake_gpu *dev, unsigned long long types,
                                      struct fake_event_set *set) {
    DEVICE_CALL(dev);
    if (set != &event_set || !event_set.allocated) return NVML_ERROR_INVALID_ARGUMENT;
    if (types & ~gpu_number(dev->index, "events.supported", 0x1F)) return NVML_ERROR_NOT_SUPPORTED;
    pthread_mutex_lock(&lock);
    dev->registered_events |= types;
    pthread_mutex_unlock(&lock);
    return NVML_SUCCESS;
}

/* Hands out the queued XIDs of registered GPUs in order, then times out like the real one. */
nvmlReturn_t nvmlEventSetWait_v2(struct fake_event_set *set, struct nvml_event_data *data,
                                 unsigned int timeout_ms) {
    struct timespec pause;
    SYSTEM_CALL();
    if (set != &event_set || !event_set.allocated || data == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    pthread_mutex_lock(&lock);
    while (next_xid < n_xids) {
        struct queued_xid *q = &xids[next_xid++];
        if (q->gpu < 0 || q->gpu >= gpu_count) continue;
        if (!(gpus[q->gpu].registered_events & EVENT_XID_CRITICAL_ERROR)) continue;
        memset(data, 0, sizeof *data);
        data->device = &gpus[q->gpu];
        data->eventType = EVENT_XID_CRITICAL_ERROR;
        data->eventData = q->xid;
        data->gpuInstanceId = 0xFFFFFFFF;
        data->computeInstanceId = 0xFFFFFFFF;
        pthread_mutex_unlock(&lock);
        return NVML_SUCCESS;
    }
    pthread_mutex_unlock(&lock);
    pause.tv_sec = timeout_ms / 1000;
    pause.tv_nsec = (long)(timeout_ms % 1000) * 1000000L;
    nanosleep(&pause, NULL);
    return NVML_ERROR_TIMEOUT;
}

nvmlReturn_t nvmlEventSetFree(struct fake_event_set *set) {
    SYSTEM_CALL();
    if (set != &event_set || !event_set.allocated) return NVML_ERROR_INVALID_ARGUMENT;
    pthread_mutex_lock(&lock);
    event_set.allocated = 0;
    for (int i = 0; i < gpu_count; i++) gpus[i].registered_events = 0;
    pthread_mutex_unlock(&lock);
    return NVML_SUCCESS;
}

/* ---- confidential computing: attestation evidence ---- */

#ifndef FAKE_NVML_OLD_DRIVER
/*
 * Per GPU, from files (a GPU without them answers NOT_SUPPORTED, as one not in
 * confidential-computing mode does):
 *
 *   gpu.N.cc.report=PATH      an SPDM GET_MEASUREMENTS request and response, binary
 *   gpu.N.cc.key=PATH         the GPU's attestation key (PEM): the report is served with
 *                             the caller's nonce, signed again (ECDSA P-384, SHA-384),
 *                             as a GPU answers; without it the file is served as it
 *                             is, whatever the nonce (a GPU replaying old evidence)
 *   gpu.N.cc.cert_chain=PATH  its certificate chain (PEM, leaf first)
 */
#include <openssl/bn.h>
#include <openssl/ecdsa.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#define CC_NONCE_SIZE 0x20
#define CC_REPORT_SIZE 0x2000
#define CC_CEC_REPORT_SIZE 0x1000
#define CERT_CHAIN_SIZE 0x1000
#define ATTESTATION_CERT_CHAIN_SIZE 0x1400
#define SPDM_NONCE_OFFSET 4 /* version, code, param1, param2 */
#define SPDM_SIGNATURE_SIZE 96
#define P384_SCALAR_SIZE 48

/* nvmlConfComputeGpuAttestationReport_t, as nvidia-ml-py lays it out. */
struct nvml_cc_report {
    unsigned int isCecAttestationReportPresent;
    unsigned int attestationReportSize;
    unsigned int cecAttestationReportSize;
    unsigned char nonce[CC_NONCE_SIZE];
    unsigned char attestationReport[CC_REPORT_SIZE];
    unsigned char cecAttestationReport[CC_CEC_REPORT_SIZE];
};

/* nvmlConfComputeGpuCertificate_t */
struct nvml_cc_certificate {
    unsigned int certChainSize;
    unsigned int attestationCertChainSize;
    unsigned char certChain[CERT_CHAIN_SIZE];
    unsigned char attestationCertChain[ATTESTATION_CERT_CHAIN_SIZE];
};

/* The file at gpu.N.KEY into buf; -1 when not configured, -2 unreadable or too large. */
static long read_gpu_file(int gpu, const char *key, unsigned char *buf, size_t size) {
    const char *path = gpu_get(gpu, key);
    FILE *f;
    size_t n;
    if (path == NULL) return -1;
    if ((f = fopen(path, "rb")) == NULL) return -2;
    n = fread(buf, 1, size, f);
    if (fgetc(f) != EOF) n = size + 1;
    fclose(f);
    return n > size ? -2 : (long)n;
}

/* Replaces the last 96 bytes of report with r || s over the bytes before them. */
static int sign_report(const char *key_path, unsigned char *report, size_t size) {
    FILE *f = fopen(key_path, "r");
    EVP_PKEY *key = f == NULL ? NULL : PEM_read_PrivateKey(f, NULL, NULL, NULL);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    unsigned char der[256];
    size_t der_size = sizeof der;
    const unsigned char *p = der;
    ECDSA_SIG *sig = NULL;
    int ok = 0;
    if (f != NULL) fclose(f);
    if (key != NULL && ctx != NULL && size > SPDM_SIGNATURE_SIZE &&
        EVP_DigestSignInit(ctx, NULL, EVP_sha384(), NULL, key) == 1 &&
        EVP_DigestSign(ctx, der, &der_size, report, size - SPDM_SIGNATURE_SIZE) == 1 &&
        (sig = d2i_ECDSA_SIG(NULL, &p, (long)der_size)) != NULL) {
        const BIGNUM *r, *s;
        unsigned char *out = report + size - SPDM_SIGNATURE_SIZE;
        ECDSA_SIG_get0(sig, &r, &s);
        ok = BN_bn2binpad(r, out, P384_SCALAR_SIZE) == P384_SCALAR_SIZE &&
             BN_bn2binpad(s, out + P384_SCALAR_SIZE, P384_SCALAR_SIZE) == P384_SCALAR_SIZE;
    }
    ECDSA_SIG_free(sig);
    EVP_MD_CTX_free(ctx);
    EVP_PKEY_free(key);
    return ok ? 0 : -1;
}

nvmlReturn_t nvmlDeviceGetConfComputeGpuAttestationReport(struct fake_gpu *dev,
                                                           struct nvml_cc_report *out) {
    long size;
    const char *key;
    DEVICE_CALL(dev);
    if (out == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    size = read_gpu_file(dev->index, "cc.report", out->attestationReport, CC_REPORT_SIZE);
    if (size == -1) return NVML_ERROR_NOT_SUPPORTED;
    if (size < SPDM_NONCE_OFFSET + CC_NONCE_SIZE + SPDM_SIGNATURE_SIZE) return NVML_ERROR_UNKNOWN;
    key = gpu_get(dev->index, "cc.key");
    if (key != NULL) {
        memcpy(out->attestationReport + SPDM_NONCE_OFFSET, out->nonce, CC_NONCE_SIZE);
        if (sign_report(key, out->attestationReport, (size_t)size) != 0) return NVML_ERROR_UNKNOWN;
    }
    out->attestationReportSize = (unsigned int)size;
    out->isCecAttestationReportPresent = 0;
    out->cecAttestationReportSize = 0;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetConfComputeGpuCertificate(struct fake_gpu *dev,
                                                     struct nvml_cc_certificate *out) {
    long size;
    DEVICE_CALL(dev);
    if (out == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    memset(out, 0, sizeof *out);
    size = read_gpu_file(dev->index, "cc.cert_chain", out->attestationCertChain,
                         ATTESTATION_CERT_CHAIN_SIZE);
    if (size == -1) return NVML_ERROR_NOT_SUPPORTED;
    if (size < 0) return NVML_ERROR_UNKNOWN;
    out->attestationCertChainSize = (unsigned int)size;
    return NVML_SUCCESS;
}
#endif
