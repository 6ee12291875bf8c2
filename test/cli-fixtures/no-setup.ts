/** A module without `setupJobs`, for the CLI's error message test. */
export const jobs = [];
